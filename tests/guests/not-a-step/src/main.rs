//! A plain WASI command: a component, but for the `wasi:cli/command` world
//! rather than the step world, so the host must refuse it with a clear error.

fn main() {
    println!("not a step");
}
