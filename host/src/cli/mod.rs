//! Argument parsing, output and exit codes; everything else is in the library.

mod bench;
mod exit;
mod inspect;
mod journal;
mod remote;
mod serve;
mod step;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stepbox::config::HostConfig;
use stepbox::{Limits, Sandbox, SandboxBuilder};

/// Run untrusted workflow steps as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "stepbox", version, about, after_help = exit::TABLE)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// Directory of precompiled components [default: $XDG_CACHE_HOME/stepbox or ~/.cache/stepbox]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components afresh instead of using the disk cache
    #[arg(long, global = true, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Host configuration (quotas, timeouts, breakers, step defaults) [default: ./stepbox.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where steps' private /tmp directories are created [default: /dev/shm if writable, else the system temp dir]
    #[arg(long, global = true, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    /// The journal database [default: .stepbox/stepbox.db]
    #[arg(long, global = true, value_name = "FILE")]
    db: Option<PathBuf>,
    /// strict: a step's completion is durable before anything outside the host can depend on it;
    /// batched: within a window; memory: no journal [default: strict]
    #[arg(long, global = true, value_name = "LEVEL")]
    durability: Option<stepbox::store::Durability>,
    /// While `run` or `resume` works, keep its metrics (Prometheus text format) in this file, rewritten every second
    #[arg(long, global = true, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Log lines as text, or as JSON objects (one per line) for machines
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Talk to a `stepbox serve` at this URL (run, runs, show, cancel, report, metrics) instead of a local journal
    #[arg(long, global = true, env = "STEPBOX_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The bearer token for --server
    #[arg(
        long,
        global = true,
        env = "STEPBOX_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one step component on an input and print its output
    Step(step::StepCommand),
    /// Show a component's imports and exports, and whether it fits the step world
    Inspect(inspect::InspectCommand),
    /// Run workflow files and print their outputs
    Run(workflow::RunCommand),
    /// Check workflow files (and their components) without running them
    Validate(workflow::ValidateCommand),
    /// Print a workflow's levels and critical path
    Plan(workflow::PlanCommand),
    /// Resume the journal's incomplete runs, without starting new ones
    Resume(journal::ResumeCommand),
    /// List the journal's runs, newest first
    Runs(journal::RunsCommand),
    /// Print one run's history: steps, attempts, outcomes, usage, timestamps
    Show(journal::ShowCommand),
    /// Remove old finished runs' payloads, keeping their audit records
    Gc(journal::GcCommand),
    /// Print the journal's metrics in the Prometheus text format
    Metrics(journal::MetricsCommand),
    /// Where a run's time went: critical path, waits, retries, steps near their limits; --svg draws it
    Report(journal::ReportCommand),
    /// Serve the HTTP API on a host (resumes incomplete runs first)
    Serve(serve::ServeCommand),
    /// List the hosts writing to the journal, with their leases and the runs each owns
    Hosts(journal::HostsCommand),
    /// Cancel a run on a server (--server)
    Cancel(journal::CancelCommand),
    /// Make bearer tokens for `[[tenants]]`
    Token(serve::TokenCommand),
    /// Run the standard benchmark scenarios; save or compare baselines
    Bench(bench::BenchCommand),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return exit::code(exit::SUCCESS);
            }
            eprintln!("{} (see --help)", one_line(&e.render().to_string()));
            return exit::code(exit::BAD_INPUT);
        }
    };
    // A lone step shows its guest's log; workflows keep theirs in the
    // journal (`stepbox show`), or show it with RUST_LOG=guest=info.
    let default_filter = match cli.command {
        Command::Step(_) => "warn,guest=info",
        _ => "warn",
    };
    init_tracing(cli.global.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::HOST_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Step(cmd) => cmd.run(&cli.global).await,
            Command::Inspect(cmd) => cmd.run(&cli.global),
            Command::Run(cmd) => cmd.run(&cli.global).await,
            Command::Validate(cmd) => cmd.run(&cli.global),
            Command::Plan(cmd) => cmd.run(),
            Command::Resume(cmd) => cmd.run(&cli.global).await,
            Command::Runs(cmd) => cmd.run(&cli.global).await,
            Command::Show(cmd) => cmd.run(&cli.global).await,
            Command::Gc(cmd) => cmd.run(&cli.global),
            Command::Metrics(cmd) => cmd.run(&cli.global).await,
            Command::Report(cmd) => cmd.run(&cli.global).await,
            Command::Serve(cmd) => cmd.run(&cli.global).await,
            Command::Token(cmd) => cmd.run(),
            Command::Cancel(cmd) => cmd.run(&cli.global).await,
            Command::Hosts(cmd) => cmd.run(&cli.global).await,
            Command::Bench(cmd) => cmd.run(&cli.global).await,
        }
    });
    match result {
        Ok(code) => exit::code(code),
        Err(CliError { code, error }) => {
            eprintln!("error: {error:#}");
            exit::code(code)
        }
    }
}

/// clap's rendering of an error: its first paragraph (what is wrong, with
/// any indented list of what is missing) on one line, without the usage hints.
fn one_line(rendered: &str) -> String {
    let paragraph: Vec<&str> = rendered
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    if paragraph.is_empty() {
        "error: invalid arguments".to_owned()
    } else {
        paragraph.join(" ")
    }
}

/// An error that ends a command, with its exit code: [`exit::BAD_INPUT`]
/// unless it says otherwise, since most errors are about what was given.
#[derive(Debug)]
struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    fn host(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: exit::HOST_FAILURE,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(error: E) -> CliError {
        CliError {
            code: exit::BAD_INPUT,
            error: error.into(),
        }
    }
}

impl GlobalArgs {
    /// `--token` (`STEPBOX_TOKEN`), if given.
    fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// The server `--server` names, if it does.
    fn remote(&self) -> Result<Option<remote::Remote>, CliError> {
        self.server
            .as_deref()
            .filter(|url| !url.is_empty())
            .map(|url| remote::Remote::new(url, self.token.clone()))
            .transpose()
    }

    /// The host configuration: `--config`, else `./stepbox.toml` if it exists, else defaults.
    fn host_config(&self) -> Result<HostConfig, CliError> {
        let default = PathBuf::from("stepbox.toml");
        match &self.config {
            Some(path) => Ok(HostConfig::from_file(path)?),
            None if default.is_file() => Ok(HostConfig::from_file(&default)?),
            None => Ok(HostConfig::default()),
        }
    }

    /// A sandbox with the caching these flags ask for and the configured step defaults.
    fn sandbox(&self) -> Result<Sandbox, CliError> {
        let limits = self.host_config()?.limits;
        let mut builder = SandboxBuilder::default().default_limits(Limits::default().with(&limits));
        if let Some(dir) = self
            .cache_dir
            .clone()
            .or_else(|| (!self.no_cache).then(default_cache_dir).flatten())
        {
            builder = builder.cache_dir(dir);
        }
        if let Some(dir) = &self.scratch_dir {
            builder = builder.scratch_dir(dir);
        }
        builder.build().map_err(CliError::host)
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("stepbox"))
}

/// Logs go to stderr, filtered by `RUST_LOG` (else `default_filter`). Each
/// line carries the run and step it came from (their spans).
fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // The run and step spans, whatever the filter: every line names its run and step.
    let filter = match "stepbox::span=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.without_time().try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_clap_error_keeps_what_is_missing_on_its_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <COMPONENT>\n\nUsage: stepbox step <COMPONENT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "error: the following required arguments were not provided: <COMPONENT>"
        );
    }
}
