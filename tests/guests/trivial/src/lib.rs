//! The smallest step: returns its input. Used to measure the host's own cost.

fn echo(input: serde_json::Value) -> Result<serde_json::Value, stepbox_guest::StepError> {
    Ok(input)
}

stepbox_guest::step!(echo);
