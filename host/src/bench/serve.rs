//! The server's scenarios: 3-step trivial workflows submitted over
//! HTTP/1.1 keep-alive connections to a `stepbox serve` host with a strict
//! journal, in this process, on a loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;

use crate::config::{HostConfig, JournalSettings};
use crate::server::{Server, ServerError, ServerOptions};
use crate::store::Durability;
use crate::{Host, Sandbox};

/// Clients submitting at once: each waits for its answer before its next
/// request, as a service calling stepbox does.
pub const CLIENTS: usize = 64;
/// Runs per request in the batch scenario.
pub const BATCH: usize = 100;

/// One keep-alive HTTP/1.1 connection.
pub(super) struct Client {
    sender: SendRequest<Full<Bytes>>,
    /// The `Host` header: the address itself (an open server answers only
    /// to loopback names).
    host: String,
}

impl Client {
    pub(super) async fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Client {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request; returns the status and the body, which must be a
    /// success.
    pub(super) async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{path}: {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }
}

/// A server on a loopback port with workflow `three` (3 trivial steps in a
/// chain) uploaded, until [`Served::stop`].
pub struct Served {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Served {
    /// Starts a host journaling strictly in a fresh file under `dir` and a
    /// server on it; uploads `hello` and the workflow.
    pub async fn start(sandbox: &Sandbox, dir: &Path, hello: &Path) -> Result<Served, String> {
        let tag = fastrand::u64(..);
        let mut config = HostConfig {
            scheduler: super::scenarios::config(),
            journal: JournalSettings {
                db: dir.join(format!("serve-{tag}.db")),
                durability: Durability::Strict,
                shutdown_grace: Duration::ZERO,
                ..JournalSettings::default()
            },
            ..HostConfig::default()
        };
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.data = Some(dir.join(format!("serve-{tag}")));
        let options = ServerOptions {
            settings: config.server.clone(),
            tenants: Vec::new(),
        };
        let host = Host::start(sandbox.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        let server = Server::bind(Arc::new(host), options)
            .await
            .map_err(|e| e.to_string())?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let bytes = std::fs::read(hello).map_err(|e| format!("{}: {e}", hello.display()))?;
        let mut client = Client::connect(addr).await?;
        let uploaded = client
            .send(Method::PUT, "/v1/components", "application/wasm", bytes)
            .await?;
        let digest =
            serde_json::from_slice::<serde_json::Value>(&uploaded).map_err(|e| e.to_string())?["digest"]
                .as_str()
                .ok_or("the upload answered no digest")?
                .to_owned();
        let mut yaml = String::from("name: three\nsteps:\n");
        for i in 0..3 {
            yaml.push_str(&format!(
                "  - id: s{i}\n    component: {digest}\n    input: {{name: bench}}\n"
            ));
            if i > 0 {
                yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
            }
        }
        client
            .send(Method::PUT, "/v1/workflows/three", "application/yaml", yaml)
            .await?;
        Ok(Served { addr, stop, serving })
    }

    /// `runs` runs from `clients` clients, `per_request` runs a request,
    /// each request waiting for its runs' end. Returns the wall time and
    /// each request's latency, sorted.
    pub async fn closed_loop(
        &self,
        clients: usize,
        runs: usize,
        per_request: usize,
    ) -> Result<(Duration, Vec<Duration>), String> {
        let requests = runs.div_ceil(per_request);
        let body: Bytes = match per_request {
            1 => Bytes::from_static(b"{}"),
            n => Bytes::from(format!("{{\"inputs\": [{}{{}}]}}", "{}, ".repeat(n - 1))),
        };
        let count = clients;
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            clients.push(Client::connect(self.addr).await?);
        }
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let body = body.clone();
                // Requests dealt round-robin: client i sends i, i + count...
                let mine = (i..requests).step_by(count).count();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(mine);
                    for _ in 0..mine {
                        let t = Instant::now();
                        let answer = client
                            .send(
                                Method::POST,
                                "/v1/workflows/three/runs?wait=60s",
                                "application/json",
                                body.clone(),
                            )
                            .await?;
                        latencies.push(t.elapsed());
                        if memchr::memmem::find(&answer, b"\"succeeded\"").is_none() {
                            return Err(format!(
                                "a run did not succeed: {}",
                                String::from_utf8_lossy(&answer)
                            ));
                        }
                    }
                    Ok::<_, String>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(requests);
        for task in tasks {
            latencies.extend(task.await.map_err(|e| e.to_string())??);
        }
        let took = started.elapsed();
        latencies.sort_unstable();
        Ok((took, latencies))
    }

    /// Stops the server and its host.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.serving
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// The `p`-quantile of sorted `values`.
pub fn quantile(values: &[Duration], p: f64) -> Duration {
    match values.len() {
        0 => Duration::ZERO,
        n => values[((n as f64 * p) as usize).min(n - 1)],
    }
}
