//! Exit codes: one per way a command can end, documented in `--help` and the README.

use std::process::ExitCode;

use stepbox::OutcomeKind;

/// The command did what was asked (for `step`: the step completed).
pub const SUCCESS: u8 = 0;
/// The host itself failed (an I/O error, or the sandbox could not set up an instance).
pub const HOST_FAILURE: u8 = 1;
/// Bad input: flags, files, JSON, or a component that is not a step.
pub const BAD_INPUT: u8 = 2;
/// `inspect`: a valid component that does not fit the step world.
pub const NOT_A_STEP: u8 = 3;
/// The journal cannot be used: locked by another process, read-only, full,
/// corrupt, or written by a newer stepbox.
pub const JOURNAL: u8 = 4;
/// `bench --baseline`: a scenario got slower than its baseline.
pub const REGRESSION: u8 = 5;

/// The exit code of `stepbox step` for each outcome kind.
pub fn for_outcome(kind: OutcomeKind) -> u8 {
    match kind {
        OutcomeKind::Completed => SUCCESS,
        OutcomeKind::HostFailure => HOST_FAILURE,
        OutcomeKind::InvalidInput => 10,
        OutcomeKind::Retryable => 11,
        OutcomeKind::Failed => 12,
        OutcomeKind::OutOfFuel => 20,
        OutcomeKind::MemoryLimit => 21,
        OutcomeKind::Timeout => 22,
        OutcomeKind::OutputTooLarge => 23,
        OutcomeKind::StackOverflow => 24,
        OutcomeKind::Trap => 25,
        OutcomeKind::CircuitOpen => 26,
        OutcomeKind::QuotaExceeded => 27,
        OutcomeKind::ScratchLimit => 28,
        OutcomeKind::HandleLimit => 29,
        OutcomeKind::Cancelled => 130,
    }
}

/// The table printed at the end of `stepbox --help`.
pub const TABLE: &str = "\
Exit codes:
    0  success (the step completed)       20  out of fuel
    1  host failure                       21  memory limit
    2  bad input (flags, files, JSON,     22  timeout
       components)                        23  output too large
    3  inspect: not a step component      24  stack overflow
    4  journal unusable (locked,          25  trap (guest panic, bad access...)
       read-only, full, corrupt, newer)   26  circuit open
    5  bench: slower than the baseline    27  quota exceeded
   10  step error: invalid-input          28  scratch limit (/tmp bytes or entries)
   11  step error: retryable              29  handle limit (open files, streams)
   12  step error: failed                130  cancelled (Ctrl-C)
For `run`, the code is that of the first step that failed the workflow;
after a graceful shutdown (SIGINT/SIGTERM) it is 0.";

pub fn code(n: u8) -> ExitCode {
    ExitCode::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_kind_has_a_distinct_documented_code() {
        let kinds = OutcomeKind::ALL;
        let mut codes: Vec<u8> = kinds.iter().map(|k| for_outcome(*k)).collect();
        for code in &codes {
            assert!(
                TABLE.contains(&format!("{code:>3}  ")),
                "code {code} is not in the table"
            );
        }
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }
}
