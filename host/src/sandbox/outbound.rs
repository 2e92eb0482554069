//! Outbound HTTP from a step: `wasi:http`'s outgoing handler, by explicit
//! grant only.
//!
//! A request leaves the sandbox only when its `host:port` is granted. The
//! name is then resolved here, once, and the connection goes to the address
//! that was checked (a second lookup could answer differently): an address
//! that is loopback, private, link-local or otherwise not global is refused
//! unless that address and port are granted themselves. A redirect is a new
//! request from the guest and is checked again. Requests count against the
//! step's deadline, their bodies and the responses' are capped, and so is
//! the number of requests an attempt may make. Every refusal is an error
//! code the guest sees and a record in the step's log.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesize::ByteSize;
use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::capture::LogCapture;

/// Default number of requests one attempt of a step may send.
pub const DEFAULT_HTTP_REQUESTS: u32 = 64;

/// Default cap on the body of one request a step sends.
pub const DEFAULT_HTTP_REQUEST_BODY: ByteSize = ByteSize::mib(4);

/// Default cap on the body of one response a step receives.
pub const DEFAULT_HTTP_RESPONSE_BODY: ByteSize = ByteSize::mib(16);

/// One destination a step may call: a host name or IP address, and a port.
///
/// Written `host:port` (`api.example.com:443`, `127.0.0.1:8080`,
/// `[::1]:8080`); names compare without regard to case.
///
/// # Examples
///
/// ```
/// use stepbox::sandbox::HttpGrant;
///
/// let grant: HttpGrant = "API.example.com:443".parse()?;
/// assert_eq!(grant.to_string(), "api.example.com:443");
/// assert!("api.example.com".parse::<HttpGrant>().is_err()); // no port
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpGrant {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl HttpGrant {
    fn new(host: &str, port: u16) -> Option<HttpGrant> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                if !valid {
                    return None;
                }
                Host::Name(name)
            }
        };
        Some(HttpGrant { host, port })
    }

    fn address(addr: SocketAddr) -> HttpGrant {
        HttpGrant {
            host: Host::Ip(addr.ip().to_canonical()),
            port: addr.port(),
        }
    }
}

impl FromStr for HttpGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<HttpGrant, String> {
        let bad = |why: &str| {
            format!("`{text}` is not a grant: {why}; write HOST:PORT, such as `api.example.com:443`")
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("it names no port"))?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(bad("an IPv6 address goes in brackets"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
        HttpGrant::new(host, port).ok_or_else(|| bad("the host is not a name or an IP address"))
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(name) => write!(f, "{name}:{}", self.port),
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

impl serde::Serialize for HttpGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a step may do over HTTP: where it may call, and how much.
///
/// The default grants nothing: every request is denied.
///
/// # Examples
///
/// ```
/// use stepbox::sandbox::HttpPolicy;
///
/// let policy = HttpPolicy::allowing(["api.example.com:443".parse()?]);
/// assert_eq!(policy.max_requests, stepbox::sandbox::DEFAULT_HTTP_REQUESTS);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// The destinations granted.
    pub allow: Vec<HttpGrant>,
    /// Requests one attempt may send.
    pub max_requests: u32,
    /// Largest request body.
    pub max_request_body: ByteSize,
    /// Largest response body.
    pub max_response_body: ByteSize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allow: Vec::new(),
            max_requests: DEFAULT_HTTP_REQUESTS,
            max_request_body: DEFAULT_HTTP_REQUEST_BODY,
            max_response_body: DEFAULT_HTTP_RESPONSE_BODY,
        }
    }
}

impl HttpPolicy {
    /// The policy of a step granted nothing: one for all of them, so that
    /// a step that makes no request costs no allocation for it.
    pub(crate) fn deny_all() -> Arc<HttpPolicy> {
        static DENY_ALL: OnceLock<Arc<HttpPolicy>> = OnceLock::new();
        Arc::clone(DENY_ALL.get_or_init(|| Arc::new(HttpPolicy::default())))
    }

    /// The default caps, granting `allow`.
    pub fn allowing(allow: impl IntoIterator<Item = HttpGrant>) -> HttpPolicy {
        HttpPolicy {
            allow: allow.into_iter().collect(),
            ..HttpPolicy::default()
        }
    }

    fn grants(&self, grant: &HttpGrant) -> bool {
        self.allow.contains(grant)
    }
}

/// Whether `ip` is reachable on the public internet: what a granted name
/// may resolve to without its address being granted too.
fn is_global(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0xdb8)
        }
    }
}

/// Why a request was refused: what the step's log says, and the error code
/// the guest sees.
#[derive(Debug)]
enum Denied {
    NotGranted(String),
    Address {
        authority: String,
        ip: IpAddr,
        port: u16,
    },
    TooMany(u32),
    RequestBody {
        limit: u64,
        size: u64,
    },
    ResponseBody {
        limit: u64,
        size: u64,
    },
    NoAuthority,
}

impl Denied {
    fn error(&self) -> Error {
        match self {
            Denied::NotGranted(_) | Denied::TooMany(_) | Denied::NoAuthority => Error::HttpRequestDenied,
            Denied::Address { .. } => Error::DestinationIpProhibited,
            Denied::RequestBody { limit, .. } => Error::HttpRequestBodySize(Some(*limit)),
            Denied::ResponseBody { limit, .. } => Error::HttpResponseBodySize(Some(*limit)),
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::NotGranted(target) => write!(
                f,
                "http: request to {target} denied: not granted (grant it with `allow_http: [\"{target}\"]`)"
            ),
            Denied::Address { authority, ip, port } => write!(
                f,
                "http: request to {authority} denied: it resolves to {ip}, which is not a public address \
                 (grant `{}` itself to allow it)",
                SocketAddr::new(*ip, *port)
            ),
            Denied::TooMany(limit) => write!(
                f,
                "http: request denied: this attempt already sent {limit} requests, its limit"
            ),
            Denied::RequestBody { limit, size } => {
                write!(
                    f,
                    "http: request body of {size} bytes is over the {limit}-byte limit"
                )
            }
            Denied::ResponseBody { limit, size } => {
                write!(
                    f,
                    "http: response body of {size} bytes is over the {limit}-byte limit"
                )
            }
            Denied::NoAuthority => write!(f, "http: request denied: it names no host"),
        }
    }
}

/// Records the refusal in the step's log (which the host's log also shows)
/// and gives the code the guest sees.
fn refuse(log: &LogCapture, denied: &Denied) -> Error {
    log.host(&denied.to_string());
    denied.error()
}

/// One instance's outbound HTTP: its policy, what it has sent, its deadline.
pub(crate) struct Outbound {
    policy: Arc<HttpPolicy>,
    log: LogCapture,
    sent: u32,
    deadline: Instant,
}

impl Outbound {
    pub(crate) fn new(policy: Arc<HttpPolicy>, log: LogCapture, deadline: Instant) -> Outbound {
        Outbound {
            policy,
            log,
            sent: 0,
            deadline,
        }
    }

    /// The checks that need no network: grant, request count, declared size.
    fn admit(&mut self, request: &Request<WasiBody>) -> Result<Target, Denied> {
        let uri = request.uri();
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(Denied::NoAuthority)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let grant = HttpGrant::new(host, port).ok_or(Denied::NoAuthority)?;
        if !self.policy.grants(&grant) {
            return Err(Denied::NotGranted(grant.to_string()));
        }
        if self.sent >= self.policy.max_requests {
            return Err(Denied::TooMany(self.policy.max_requests));
        }
        self.sent += 1;
        let limit = self.policy.max_request_body.as_u64();
        if let Some(size) = declared_length(request.headers())
            && size > limit
        {
            return Err(Denied::RequestBody { limit, size });
        }
        Ok(Target { grant, tls })
    }
}

struct Target {
    grant: HttpGrant,
    tls: bool,
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(Response<WasiBody>, Io), Error>> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(&mut self, request: Request<WasiBody>, options: Option<RequestOptions>, _: Io) -> Sent {
        let target = match self.admit(&request) {
            Ok(target) => target,
            Err(denied) => {
                let error = refuse(&self.log, &denied);
                return Box::new(async move { Err(error) });
            }
        };
        let policy = Arc::clone(&self.policy);
        let log = self.log.clone();
        let deadline = self.deadline;
        Box::new(async move { send(request, target, options, &policy, log, deadline).await })
    }
}

/// Resolves the target once, checks every address, connects to the first
/// that passes, and sends the request there.
async fn send(
    mut request: Request<WasiBody>,
    target: Target,
    options: Option<RequestOptions>,
    policy: &HttpPolicy,
    log: LogCapture,
    deadline: Instant,
) -> Result<(Response<WasiBody>, Io), Error> {
    let within = |wanted: Option<Duration>| {
        let left = deadline.saturating_duration_since(Instant::now());
        wanted.map_or(left, |w| w.min(left))
    };
    let authority = target.grant.to_string();
    let port = target.grant.port;
    let addresses: Vec<SocketAddr> = match &target.grant.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(within(None), lookup).await {
                Err(_) => return Err(Error::DnsTimeout),
                Ok(Err(e)) => {
                    log.host(&format!("http: cannot resolve {name}: {e}"));
                    return Err(Error::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    });
                }
                Ok(Ok(found)) => found.collect(),
            }
        }
    };
    let Some(&address) = addresses
        .iter()
        .find(|a| is_global(a.ip()) || policy.grants(&HttpGrant::address(**a)))
    else {
        let first = addresses.first().ok_or(Error::DestinationNotFound)?;
        return Err(refuse(
            &log,
            &Denied::Address {
                authority,
                ip: first.ip().to_canonical(),
                port,
            },
        ));
    };

    let connect_timeout = within(options.and_then(|o| o.connect_timeout));
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = stream.set_nodelay(true);
    let stream: Box<dyn Stream> = if target.tls {
        let name = match &target.grant.host {
            Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
            Host::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?,
        };
        let tls = tokio::time::timeout(connect_timeout, tls_connector().connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;

    // The request line carries the path only: scheme and authority are for
    // proxies, and the Host header already names the host.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let limit = policy.max_request_body.as_u64();
    let request = request.map(|body| {
        Capped {
            inner: body,
            limit,
            seen: 0,
            log: log.clone(),
            request: true,
        }
        .boxed_unsync()
    });

    let mut conn = Box::pin(conn);
    let first_byte = within(options.and_then(|o| o.first_byte_timeout));
    let response = {
        let send = sender.send_request(request);
        tokio::pin!(send);
        // Drive the connection while waiting for the response head.
        let waited = tokio::time::timeout(first_byte, async {
            tokio::select! {
                response = &mut send => response.map_err(Error::from),
                ended = &mut conn => match ended {
                    Ok(()) => send.await.map_err(Error::from),
                    Err(e) => Err(Error::from(e)),
                },
            }
        })
        .await;
        waited.map_err(|_| Error::ConnectionReadTimeout)??
    };
    let limit = policy.max_response_body.as_u64();
    if let Some(size) = declared_length(response.headers())
        && size > limit
    {
        return Err(refuse(&log, &Denied::ResponseBody { limit, size }));
    }
    let response = response.map(|body| {
        Capped {
            inner: body.map_err(Error::from),
            limit,
            seen: 0,
            log,
            request: false,
        }
        .boxed_unsync()
    });
    let io: Io = Box::new(async move { conn.await.map_err(Error::from) });
    Ok((response, io))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One TLS client configuration for the process: the web PKI's roots.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        // ring rather than aws-lc-rs: aws-lc-rs needs cmake to build. ring
        // has no post-quantum key exchange, hence the deprecation.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(Arc::clone(config))
}

/// A body that fails once more than `limit` bytes have passed through it.
struct Capped<B> {
    inner: B,
    limit: u64,
    seen: u64,
    log: LogCapture,
    request: bool,
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for Capped<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        let (limit, size) = (this.limit, this.seen);
                        let denied = if this.request {
                            Denied::RequestBody { limit, size }
                        } else {
                            Denied::ResponseBody { limit, size }
                        };
                        return Poll::Ready(Some(Err(refuse(&this.log, &denied))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_names_addresses_and_ports() {
        let g = |s: &str| s.parse::<HttpGrant>();
        assert_eq!(g("Example.COM:443").unwrap().to_string(), "example.com:443");
        assert_eq!(g("127.0.0.1:8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(g("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:x",
            ":80",
            "::1:80",
            "a b:80",
            "x:70000",
        ] {
            let e = g(bad).unwrap_err();
            assert!(e.contains("HOST:PORT") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn only_global_addresses_pass_without_a_grant_of_their_own() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(!is_global(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_global(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn an_address_grant_matches_a_mapped_address() {
        let granted = HttpPolicy::allowing(["127.0.0.1:80".parse().unwrap()]);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert!(granted.grants(&HttpGrant::address(mapped)));
    }
}
