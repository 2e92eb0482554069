//! `stepbox inspect`: what a component imports and exports, and whether it is a step.

use std::path::PathBuf;

use anyhow::Context;

use super::{CliError, GlobalArgs, exit};

#[derive(Debug, clap::Args)]
pub struct InspectCommand {
    /// The component to inspect (a .wasm file)
    component: PathBuf,
    /// Print the description as JSON
    #[arg(long)]
    json: bool,
}

impl InspectCommand {
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let bytes = std::fs::read(&self.component)
            .with_context(|| format!("cannot read `{}`", self.component.display()))?;
        let sandbox = global.sandbox()?;
        let info = sandbox.inspect(&self.component.display().to_string(), &bytes)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&info).map_err(CliError::host)?);
        } else {
            println!("component {}", self.component.display());
            println!("digest    sha256:{}", info.digest);
            println!("imports");
            for item in &info.imports {
                println!("  {:<10} {}", item.kind, item.name);
            }
            println!("exports");
            for item in &info.exports {
                println!("  {:<10} {}", item.kind, item.name);
            }
            if info.fits() {
                println!("fits the stepbox step world (stepbox:step/step@0.1.0)");
            } else {
                println!("does NOT fit the stepbox step world:");
                for problem in &info.problems {
                    println!("  - {problem}");
                }
            }
        }
        Ok(if info.fits() {
            exit::SUCCESS
        } else {
            exit::NOT_A_STEP
        })
    }
}
