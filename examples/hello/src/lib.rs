//! `hello`: the smallest useful step. Greets someone by name.
//!
//! ```text
//! stepbox step hello.wasm --input '{"name": "world"}'
//! {"message":"Hello, world!"}
//! ```

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
pub struct Greeting {
    /// Who to greet.
    pub name: String,
}

/// The step's output.
#[derive(Serialize)]
pub struct Reply {
    /// The greeting.
    pub message: String,
}

/// Greets `input.name`; an empty name is invalid input.
pub fn greet(input: Greeting) -> Result<Reply, StepError> {
    let name = input.name.trim();
    if name.is_empty() {
        return Err(StepError::invalid_input("`name` must not be empty"));
    }
    stepbox_guest::debug(format!("greeting {name}"));
    Ok(Reply {
        message: format!("Hello, {name}!"),
    })
}

stepbox_guest::step!(greet);
