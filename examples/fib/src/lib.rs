//! `fib`: naive recursive Fibonacci, the CPU-bound step of Windmill's
//! published engine comparison (40 sequential `fib(10)`, 10 parallel `fib(33)`).
//!
//! ```text
//! stepbox step fib.wasm --input '{"n": 10}'
//! {"n":10,"value":55}
//! ```

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input (extra fields, such as the previous step's `value`, are ignored).
#[derive(Deserialize)]
pub struct Input {
    /// Which Fibonacci number to compute.
    pub n: u32,
}

/// The step's output.
#[derive(Serialize)]
pub struct Output {
    /// The `n` asked for.
    pub n: u32,
    /// `fib(n)`.
    pub value: u64,
}

/// The `n`th Fibonacci number, the slow way on purpose.
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Computes `fib(input.n)`; `n` above 50 would take hours and is refused.
pub fn step(input: Input) -> Result<Output, StepError> {
    if input.n > 50 {
        return Err(StepError::invalid_input("`n` must be at most 50"));
    }
    Ok(Output {
        n: input.n,
        value: fib(input.n),
    })
}

stepbox_guest::step!(step);

#[cfg(test)]
mod tests {
    #[test]
    fn small_values_are_right() {
        assert_eq!(
            (0..8).map(super::fib).collect::<Vec<_>>(),
            [0, 1, 1, 2, 3, 5, 8, 13]
        );
    }
}
