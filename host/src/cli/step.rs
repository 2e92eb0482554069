//! `stepbox step`: run one component on one input.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use stepbox::limits::{parse_duration, parse_size};
use stepbox::sandbox::{HttpGrant, HttpPolicy, Secrets};
use stepbox::{LimitOverrides, Outcome, RunOptions, RunReport};

use super::{CliError, GlobalArgs, exit};

#[derive(Debug, clap::Args)]
#[command(after_help = super::exit::TABLE)]
pub struct StepCommand {
    /// The step component (a .wasm file built for wasm32-wasip2)
    component: PathBuf,
    /// The input JSON: inline, @FILE to read a file, or - to read stdin
    #[arg(long, short, default_value = "{}", value_name = "JSON|@FILE|-")]
    input: String,
    /// Fuel budget (about one unit per wasm instruction) [default: 10000000000]
    #[arg(long, value_parser = parse_fuel, value_name = "N")]
    fuel: Option<u64>,
    /// Linear memory limit, such as 64MiB [default: 64MiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Wall-clock timeout, such as 500ms or 2s [default: 30s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Output size limit [default: 16MiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_output: Option<ByteSize>,
    /// Captured log size limit (log records, stdout and stderr) [default: 1MiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_log: Option<ByteSize>,
    /// Wasm stack, 64KiB to 64MiB [default: 512KiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    stack: Option<ByteSize>,
    /// Bytes the step may keep in its /tmp [default: 64MiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    scratch: Option<ByteSize>,
    /// Files, directories and links the step may have in its /tmp [default: 10000]
    #[arg(long, value_name = "N")]
    scratch_entries: Option<u64>,
    /// Open files, streams and other handles the step may hold at once [default: 512]
    #[arg(long, value_name = "N")]
    handles: Option<u32>,
    /// Let the step send HTTP requests to HOST:PORT (repeatable); nothing else is reachable
    #[arg(long = "allow-http", value_name = "HOST:PORT")]
    allow_http: Vec<HttpGrant>,
    /// Let the step read secret NAME, from stepbox.toml's [secrets] or the environment (repeatable)
    #[arg(long = "secret", value_name = "NAME", value_parser = parse_secret_name)]
    secrets: Vec<std::sync::Arc<str>>,
    /// Print the full run report (outcome, usage, log) as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Print the run's usage (time, fuel, memory) on stderr
    #[arg(long)]
    usage: bool,
}

fn parse_secret_name(text: &str) -> Result<std::sync::Arc<str>, String> {
    if stepbox::workflow::is_secret_name(text) {
        Ok(text.into())
    } else {
        Err(format!(
            "`{text}` is not a secret name: use letters, digits and `_`, not starting with a digit"
        ))
    }
}

fn parse_fuel(text: &str) -> Result<u64, String> {
    text.replace('_', "")
        .parse()
        .map_err(|_| format!("invalid value `{text}`: expected a whole number of fuel units"))
}

impl StepCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        // Check what was given before any expensive work.
        let input = read_input(&self.input)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&input)
            .with_context(|| format!("input is not valid JSON ({})", describe_source(&self.input)))?;
        let secrets = if self.secrets.is_empty() {
            Secrets::default()
        } else {
            let held = global.host_config()?.scheduler.secrets;
            held.select(&self.secrets, true).map_err(|name| {
                anyhow::anyhow!(
                    "secret `{name}` is neither in stepbox.toml's [secrets] nor in the environment"
                )
            })?
        };
        let sandbox = global.sandbox()?;
        let path = self.component.clone();
        let loader = sandbox.clone();
        let component = tokio::task::spawn_blocking(move || loader.load_file(&path))
            .await
            .map_err(CliError::host)??;

        let cancel = stepbox::CancellationToken::new();
        let on_interrupt = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_interrupt.cancel();
            }
        });
        let mut options = RunOptions::default()
            .secrets(secrets)
            .limits(LimitOverrides {
                fuel: self.fuel,
                memory: self.memory,
                timeout: self.timeout,
                output: self.max_output,
                log: self.max_log,
                stack: self.stack,
                scratch: self.scratch,
                scratch_entries: self.scratch_entries,
                handles: self.handles,
            })
            .cancel_token(cancel);
        if !self.allow_http.is_empty() {
            options = options.http(std::sync::Arc::new(HttpPolicy::allowing(
                self.allow_http.iter().cloned(),
            )));
        }
        let report = sandbox.run(&component, &input, options).await;
        report.log.emit(component.name());
        if self.usage {
            print_usage(&report);
        }
        let code = exit::for_outcome(report.outcome.kind());
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, &report).map_err(CliError::host)?;
            writeln!(stdout).map_err(CliError::host)?;
        } else {
            match &report.outcome {
                Outcome::Completed { output } => {
                    stdout.write_all(output).map_err(CliError::host)?;
                    if !output.ends_with(b"\n") {
                        writeln!(stdout).map_err(CliError::host)?;
                    }
                }
                other => eprintln!("error: {other}"),
            }
        }
        stdout.flush().map_err(CliError::host)?;
        Ok(code)
    }
}

pub(super) fn read_input(spec: &str) -> anyhow::Result<Vec<u8>> {
    if spec == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the input from stdin")?;
        return Ok(buf);
    }
    if let Some(path) = spec.strip_prefix('@') {
        return std::fs::read(path).with_context(|| format!("cannot read the input file `{path}`"));
    }
    Ok(spec.as_bytes().to_vec())
}

pub(super) fn describe_source(spec: &str) -> String {
    match spec {
        "-" => "from stdin".into(),
        s if s.starts_with('@') => format!("from `{}`", &s[1..]),
        _ => "given with --input".into(),
    }
}

fn print_usage(report: &RunReport) {
    let usage = &report.usage;
    eprintln!(
        "usage: {} wall, {} queued, {} fuel, {} peak memory, {} peak scratch, {} output",
        humantime::format_duration(Duration::from_micros(usage.wall_time.as_micros() as u64)),
        humantime::format_duration(Duration::from_micros(usage.queue_wait.as_micros() as u64)),
        usage.fuel_consumed,
        ByteSize(usage.peak_memory).display().iec(),
        ByteSize(usage.peak_scratch).display().iec(),
        ByteSize(usage.output_bytes).display().iec(),
    );
}
