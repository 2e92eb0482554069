//! `stepbox serve`: an HTTP API on a [`Host`].
//!
//! Errors are RFC 9457 `application/problem+json` (see [`Problem`]); a
//! handler panic becomes a 500 problem (and a counted metric) instead of a
//! dropped connection. The server binds only after the host has started
//! and resumed its incomplete runs, so a client that can connect finds it
//! ready. Connections are capped (`max_connections`: more wait to be
//! accepted), a client has `request_timeout` to send its headers and its
//! body, and bodies are capped at `max_body` (413).
//!
//! On stop it first refuses new submissions (503) while the running steps
//! get the host's `shutdown_grace` to finish; what did not finish is left
//! incomplete in the journal and resumes on the next start.
//!
//! ```no_run
//! # async fn f(host: std::sync::Arc<stepbox::Host>) -> Result<(), Box<dyn std::error::Error>> {
//! use stepbox::server::{Server, ServerOptions};
//! let server = Server::bind(host, ServerOptions::default()).await?;
//! println!("listening on http://{}", server.local_addr()?);
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(())
//! # }
//! ```

mod attempts;
mod auth;
mod catalog;
mod dashboard;
mod events;
mod openapi;
mod overview;
mod problem;
mod routes;
mod runs;
mod session;
mod state;
mod uploads;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

pub use self::catalog::FRESH as CATALOG_FRESH;
pub use self::problem::Problem;
pub use self::routes::{ROUTES, UI_ROUTES};
use self::state::AppState;
use crate::config::{ServerSettings, TenantSettings};
use crate::host::{Host, HostError};

/// How long connections still open after the host has shut down (event
/// streams, slow clients) get before they are closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

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
    /// The host keeps no journal (`durability = "memory"`): a server
    /// must record what it accepts.
    #[error("a server needs a journal: set `[journal] durability` to strict or batched, not memory")]
    NoJournal,
    /// The data directory for uploads could not be made.
    #[error("cannot use `{}` for uploads: {source}", path.display())]
    Data {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The host failed to open its store for reading or to shut down.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// What a server is configured with beside its host: `stepbox.toml`'s
/// `[server]` and `[[tenants]]`.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The `[server]` section.
    pub settings: ServerSettings,
    /// The tenants; none makes an open server with one implicit tenant.
    pub tenants: Vec<TenantSettings>,
}

/// A bound server, not yet serving: its address is known (with the real
/// port when port 0 was asked).
pub struct Server {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Binds the configured address for `host`, which should already have
    /// resumed its incomplete runs.
    ///
    /// # Errors
    ///
    /// [`ServerError::Bind`] when the address cannot be bound, and the
    /// other [`ServerError`]s when the host has no journal or the data
    /// directory cannot be made.
    pub async fn bind(host: Arc<Host>, options: ServerOptions) -> Result<Server, ServerError> {
        if host.scheduler().journal().is_none() {
            return Err(ServerError::NoJournal);
        }
        let ServerOptions { settings, tenants } = options;
        let data = settings.data.clone().unwrap_or_else(|| {
            match crate::host::StoreLocation::parse(&host.settings().db) {
                crate::host::StoreLocation::Sqlite(db) => db
                    .parent()
                    .map(|d| d.join("server"))
                    .unwrap_or_else(|| "server".into()),
                crate::host::StoreLocation::Postgres(_) => ".stepbox/server".into(),
            }
        });
        std::fs::create_dir_all(&data).map_err(|source| ServerError::Data {
            path: data.clone(),
            source,
        })?;
        let reader = crate::host::open_reader(host.settings())?;
        let addr = settings.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let tenants = auth::Tenants::new(&tenants);
        host.gate_tenants(tenants.gates());
        let state = AppState {
            host,
            catalog: catalog::Catalog::new(data, Arc::clone(&reader)),
            reader,
            tenants,
            settings,
            keys: state::KeyLocks::default(),
            panics: Default::default(),
            throttled: Default::default(),
            sessions: Default::default(),
            refused_sign_ins: std::sync::Mutex::new(auth::Bucket::new(dashboard::REFUSED_SIGN_INS)),
            throughput: Default::default(),
        };
        Ok(Server {
            state: Arc::new(state),
            listener,
        })
    }

    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// The socket's error, if it has none.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Every route of the API as an [`axum::Router`], served by this
    /// server's host and tenants: to mount the API in an application's own
    /// HTTP server, or to drive it in-process (the request fuzzer does).
    /// Connection limits and header timeouts are [`Server::run`]'s, not the
    /// router's; the body limit, body timeout, problem answers and panic
    /// guard come with the router.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.state))
    }

    /// Whether anyone may call the API (no tenants are configured).
    pub fn is_open(&self) -> bool {
        self.state.tenants.is_open()
    }

    /// Whether `token` is one of a tenant's tokens: whether a sign-in link
    /// with it would work.
    pub fn knows_token(&self, token: &str) -> bool {
        self.state.tenants.by_token(token).is_some()
    }

    /// Serves until `stop` resolves; then refuses new submissions, shuts
    /// the host down gracefully (see [`Host::shutdown`]), closes the
    /// connections and the host.
    ///
    /// # Errors
    ///
    /// A [`ServerError`] when the host's shutdown fails.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let Server { state, listener } = self;
        let app = routes::router(Arc::clone(&state));
        let service = TowerToHyperService::new(app);
        let connections = Arc::new(tokio::sync::Semaphore::new(state.settings.max_connections));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let timeout = state.settings.request_timeout;
        let host = Arc::clone(&state.host);
        // The host shuts down while connections are still served, so that
        // submissions meanwhile hear 503 rather than a refused connection.
        let shutdown = tokio::spawn(async move {
            stop.await;
            host.shutdown(None).await
        });
        tokio::pin!(shutdown);
        let shut = loop {
            let permit = tokio::select! {
                shut = &mut shutdown => break shut,
                permit = Arc::clone(&connections).acquire_owned() => permit,
            };
            let Ok(permit) = permit else { continue };
            let stream = tokio::select! {
                shut = &mut shutdown => break shut,
                accepted = listener.accept() => accepted,
            };
            let stream = match stream {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service.clone());
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection: {e}");
                }
                drop(permit);
            });
        };
        drop(listener);
        let _ = tokio::time::timeout(CLOSE_GRACE, graceful.shutdown()).await;
        let shut = shut.unwrap_or(Ok(()));
        let closed = state.host.close().await;
        shut?;
        closed?;
        Ok(())
    }
}
