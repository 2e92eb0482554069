//! `runaway`: a step gone wrong, to show that the host contains it. Asked
//! to `spin` it never returns; asked to `hoard` it allocates without end.

use std::hint::black_box;

use serde::Deserialize;
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Input {
    /// Loop forever.
    Spin,
    /// Allocate memory forever.
    Hoard,
}

/// Misbehaves as asked.
pub fn runaway(input: Input) -> Result<(), StepError> {
    match input {
        Input::Spin => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        Input::Hoard => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1 << 20]));
            }
        }
    }
}

stepbox_guest::step!(runaway);
