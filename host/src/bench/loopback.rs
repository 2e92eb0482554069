//! A loopback HTTP server and a plain Rust client for it: what the cost of a
//! step's outbound call is measured against.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::serve::Client;

/// What every request gets back.
const BODY: &[u8] = br#"{"ok":true}"#;

/// A server that answers every request with a small JSON body and closes
/// the connection, as each request of a step opens its own. Stops when
/// dropped.
pub(super) struct Loopback {
    pub(super) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Loopback {
    pub(super) async fn start() -> Result<Loopback, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket));
            }
        });
        Ok(Loopback { addr, task })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    reply.extend_from_slice(BODY);
    let _ = socket.write_all(&reply).await;
    let _ = socket.shutdown().await;
}

/// `n` sequential GETs from a plain hyper client, a connection each: the
/// floor a step's outbound call is compared with.
pub(super) async fn native_calls(addr: SocketAddr, n: usize) -> Result<Duration, String> {
    let t = Instant::now();
    for _ in 0..n {
        let mut client = Client::connect(addr).await?;
        let body = client
            .send(Method::GET, "/json", "application/json", Bytes::new())
            .await?;
        if body.as_ref() != BODY {
            return Err("the loopback server answered something else".into());
        }
    }
    Ok(t.elapsed())
}
