//! `split`: cuts a text into chunks of whole lines, for a `for_each` fan-out.
//!
//! ```text
//! stepbox step split.wasm --input '{"text": "a\nb\nc", "lines_per_chunk": 2}'
//! {"chunks":["a\nb\n","c\n"]}
//! ```

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The text to split.
    pub text: String,
    /// Lines per chunk (the last chunk may have fewer).
    #[serde(default = "default_lines")]
    pub lines_per_chunk: usize,
}

fn default_lines() -> usize {
    100
}

/// The step's output.
#[derive(Serialize)]
pub struct Output {
    /// The chunks, in order; each ends with a newline.
    pub chunks: Vec<String>,
}

/// Splits `input.text` into chunks of `lines_per_chunk` lines.
pub fn split(input: Input) -> Result<Output, StepError> {
    if input.lines_per_chunk == 0 {
        return Err(StepError::invalid_input("`lines_per_chunk` must be at least 1"));
    }
    let lines: Vec<&str> = input.text.lines().collect();
    let chunks = lines
        .chunks(input.lines_per_chunk)
        .map(|chunk| chunk.iter().map(|l| format!("{l}\n")).collect())
        .collect();
    Ok(Output { chunks })
}

stepbox_guest::step!(split);
