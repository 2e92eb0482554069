//! `stepbox serve`: an HTTP front end on a [`Host`].
//!
//! Errors are RFC 9457 `application/problem+json` (see [`Problem`]); a
//! handler panic becomes a 500 problem instead of a dropped connection.
//! The server binds only after the host has started and resumed its
//! incomplete runs, so a client that can connect finds it ready.

mod problem;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use self::problem::Problem;
use crate::host::{Host, HostError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving stopped: {0}")]
    Serve(#[source] std::io::Error),
    /// The host failed to shut down cleanly.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// A bound server, not yet serving: its address is known (with the real
/// port when port 0 was asked).
pub struct Server {
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Binds `addr` for `host`, which should already have resumed its
    /// incomplete runs.
    ///
    /// # Errors
    ///
    /// [`ServerError::Bind`] when the address cannot be bound.
    pub async fn bind(host: Arc<Host>, addr: SocketAddr) -> Result<Server, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Server { host, listener })
    }

    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// The socket's error, if it has none.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then shuts the host down gracefully
    /// (see [`Host::shutdown`]), answers the requests in flight and closes
    /// the host.
    ///
    /// # Errors
    ///
    /// A [`ServerError`] when serving or the host's shutdown fails.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let host = Arc::clone(&self.host);
        let app = routes::router(Arc::clone(&self.host));
        let stopping = Arc::clone(&host);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                stop.await;
                if let Err(e) = stopping.shutdown(None).await {
                    tracing::warn!("shutdown: {e}");
                }
            })
            .await
            .map_err(ServerError::Serve)?;
        host.close().await?;
        Ok(())
    }
}
