//! The `stepbox` command line: run and inspect workflow steps.

mod cli;

/// A host allocates many small, short-lived objects from several threads
/// (parsed workflows, step reports, journal batches); glibc's allocator
/// spends much of a large workflow's load time consolidating its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
