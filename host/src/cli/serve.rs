//! `stepbox serve`: the HTTP API; the server itself is `stepbox::server`.

use std::net::SocketAddr;

use stepbox::server::Server;

use super::journal::host_error;
use super::{CliError, GlobalArgs, exit};

/// `stepbox serve`.
#[derive(Debug, clap::Args)]
pub struct ServeCommand {
    /// The address to listen on; port 0 picks a free one
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    listen: SocketAddr,
}

impl ServeCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let config = stepbox::config::HostConfig {
            journal: global.journal_settings()?,
            ..global.host_config()?
        };
        let host = stepbox::Host::start(global.sandbox()?, config)
            .await
            .map_err(host_error)?;
        // Ready only after recovery: resume before anyone can connect.
        host.resume_incomplete().map_err(CliError::host)?;
        let server = Server::bind(std::sync::Arc::new(host), self.listen)
            .await
            .map_err(CliError::host)?;
        println!(
            "listening on http://{}",
            server.local_addr().map_err(CliError::host)?
        );
        server.run(stop_signal()).await.map_err(CliError::host)?;
        Ok(exit::SUCCESS)
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
