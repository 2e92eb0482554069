//! `stepbox serve` and `stepbox token`: the HTTP API; the server itself is
//! `stepbox::server`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use stepbox::config::TokenDigest;
use stepbox::server::{Server, ServerError, ServerOptions};

use super::journal::host_error;
use super::{CliError, GlobalArgs, exit};

/// `stepbox serve`.
#[derive(Debug, clap::Args)]
pub struct ServeCommand {
    /// The address to listen on (else `[server] listen`, else 127.0.0.1:7700); port 0 picks a free one
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

impl ServeCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let mut config = global.host_config()?;
        config.journal = global.journal_settings()?;
        let mut options = ServerOptions {
            settings: config.server.clone(),
            tenants: config.tenants.clone(),
        };
        if let Some(listen) = self.listen {
            options.settings.listen = listen;
        }
        if options.tenants.is_empty() && !options.settings.listen.ip().is_loopback() {
            return Err(CliError::from(anyhow::anyhow!(
                "refusing to serve an open API on {}: configure `[[tenants]]` with tokens, or listen on a loopback address",
                options.settings.listen
            )));
        }
        let host = stepbox::Host::start(global.sandbox()?, config)
            .await
            .map_err(host_error)?;
        // Ready only after recovery: resume before anyone can connect.
        host.resume_incomplete().map_err(CliError::host)?;
        let host = Arc::new(host);
        host.share_work();
        let server = Server::bind(host, options).await.map_err(server_error)?;
        let addr = server.local_addr().map_err(CliError::host)?;
        // Scripts and tests read the first line: it stays first and alone.
        println!("listening on http://{addr}");
        // Printed once, not checked again: a failure to print it (stdout
        // closed by whoever read the first line) must not stop the server.
        let _ = writeln!(std::io::stdout(), "{}", sign_in_line(&server, addr, global));
        let _ = std::io::stdout().flush();
        if server.is_open() {
            eprintln!("note: no [[tenants]] are configured: the API needs no token");
        }
        server.run(stop_signal()).await.map_err(server_error)?;
        Ok(exit::SUCCESS)
    }
}

/// The dashboard's address, as a sign-in link when it can be one: the
/// server keeps only digests of the tenants' tokens, so it can put a token
/// in the link only when it was given one (`--token`, `STEPBOX_TOKEN`) that
/// a tenant holds. An open server needs no sign-in.
fn sign_in_line(server: &Server, addr: SocketAddr, global: &GlobalArgs) -> String {
    if server.is_open() {
        return format!("dashboard: http://{addr}/ui/");
    }
    match global.token().filter(|t| server.knows_token(t)) {
        Some(token) => format!(
            "dashboard: http://{addr}/ui/login?token={}",
            super::remote::encode(token)
        ),
        None => format!(
            "dashboard: http://{addr}/ui/login (sign in with a tenant's token, or open /ui/login?token=TOKEN)"
        ),
    }
}

fn server_error(error: ServerError) -> CliError {
    match error {
        ServerError::Host(e) => host_error(e),
        ServerError::NoJournal => CliError::from(anyhow::Error::from(error)),
        other => CliError::host(other),
    }
}

/// The first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

/// `stepbox token`.
#[derive(Debug, clap::Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Debug, clap::Subcommand)]
enum TokenAction {
    /// Print a fresh bearer token, and the line that grants it in `[[tenants]] tokens`
    New,
}

impl TokenCommand {
    pub fn run(self) -> Result<u8, CliError> {
        match self.action {
            TokenAction::New => {
                let token = fresh_token().map_err(CliError::host)?;
                println!("token: {token}");
                println!("tokens = [\"{}\"]", TokenDigest::of(&token));
                Ok(exit::SUCCESS)
            }
        }
    }
}

/// 32 bytes from the operating system's generator, as hex, prefixed so a
/// leaked one is recognisable.
fn fresh_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "sbx_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::remote::encode;

    #[test]
    fn a_token_in_the_sign_in_link_is_percent_encoded() {
        assert_eq!(encode("sbx_09af-~."), "sbx_09af-~.");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
