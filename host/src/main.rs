//! The `stepbox` command line: run and inspect workflow steps.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
