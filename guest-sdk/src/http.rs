//! Outbound HTTP from a step, through `wasi:http`.
//!
//! The host lets a step call only what its workflow step grants
//! (`allow_http: ["api.example.com:443"]`, or `stepbox step --allow-http`);
//! anything else fails with [`HttpError::Denied`], and the step's log says
//! why. Requests count against the step's deadline; their bodies, the
//! responses' bodies and the number of requests per attempt are capped by
//! the host.
//!
//! Redirects are followed (up to [`Request::max_redirects`], 5 by default),
//! each one a new request the host checks against the grant again.
//!
//! ```no_run
//! use stepbox_guest::http::{self, Request};
//!
//! let token = stepbox_guest::secret("API_TOKEN").unwrap_or_default();
//! let response = Request::post("https://api.example.com/v1/orders")
//!     .header("authorization", format!("Bearer {token}"))
//!     .json(&serde_json::json!({"id": 17}))
//!     .send()?;
//! let order: serde_json::Value = response.json()?;
//! let page = http::get("https://api.example.com/v1/status")?.text()?.to_owned();
//! # Ok::<(), stepbox_guest::StepError>(())
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use crate::StepError;

/// Redirects a request follows unless told otherwise.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Sends `GET url`.
///
/// # Errors
///
/// As [`Request::send`].
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// An HTTP request to build and send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    max_redirects: u32,
}

impl Request {
    /// A request with `method` (`GET`, `POST`...) to `url` (`http://` or `https://`).
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }

    /// A `GET` request.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.into().into_bytes()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, and `content-type` to say so.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Request {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// How many redirects to follow; 0 returns the redirect itself.
    pub fn max_redirects(mut self, n: u32) -> Request {
        self.max_redirects = n;
        self
    }

    /// Sends the request, following redirects, and reads the whole response.
    ///
    /// # Errors
    ///
    /// [`HttpError::Denied`] when the host refuses (not granted, a private
    /// address, too many requests), [`HttpError::TooLarge`] when a body is
    /// over the host's cap, [`HttpError::Url`] for a URL this cannot send,
    /// [`HttpError::TooManyRedirects`], and [`HttpError::Transport`] for
    /// anything else on the way.
    pub fn send(self) -> Result<Response, HttpError> {
        let mut request = self;
        let mut redirects = 0;
        loop {
            let url = Url::parse(&request.url)?;
            let response = send_once(&request, &url)?;
            let location = match response.status {
                301 | 302 | 303 | 307 | 308 => response.header("location"),
                _ => None,
            };
            let Some(location) = location else {
                return Ok(response);
            };
            if redirects >= request.max_redirects {
                return if request.max_redirects == 0 {
                    Ok(response)
                } else {
                    Err(HttpError::TooManyRedirects(request.max_redirects))
                };
            }
            redirects += 1;
            request.url = url.join(location);
            // 303, and 301/302 after a POST as browsers do, become a GET.
            if response.status == 303 || (matches!(response.status, 301 | 302) && request.method == "POST") {
                request.method = "GET".into();
                request.body.clear();
                request
                    .headers
                    .retain(|(name, _)| name != "content-type" && name != "content-length");
            }
        }
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as text.
    ///
    /// # Errors
    ///
    /// [`HttpError::Body`] when it is not UTF-8.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body).map_err(|e| HttpError::Body(e.to_string()))
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// [`HttpError::Body`] when it does not parse as a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Body(e.to_string()))
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: its destination is not granted, it
    /// resolves to an address that is not, or the attempt sent its quota
    /// of requests. The step's log says which.
    Denied(String),
    /// A request or response body is over the host's cap.
    TooLarge(String),
    /// The URL cannot be sent.
    Url(String),
    /// More redirects than allowed.
    TooManyRedirects(u32),
    /// The body is not what was asked for (not UTF-8, not that JSON).
    Body(String),
    /// The connection, TLS, or the protocol failed.
    Transport(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "request denied by the host: {m}"),
            HttpError::TooLarge(m) => write!(f, "body too large: {m}"),
            HttpError::Url(m) => write!(f, "bad URL: {m}"),
            HttpError::TooManyRedirects(n) => write!(f, "more than {n} redirects"),
            HttpError::Body(m) => write!(f, "unexpected body: {m}"),
            HttpError::Transport(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for StepError {
    /// A transport failure may pass if tried again; a refusal, a bad URL or
    /// an oversized body will not.
    fn from(error: HttpError) -> StepError {
        match error {
            HttpError::Transport(_) => StepError::retryable(error.to_string()),
            _ => StepError::failed(error.to_string()),
        }
    }
}

fn from_code(code: ErrorCode, target: &str) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
            HttpError::Denied(format!("{target} (see the step's log)"))
        }
        ErrorCode::HttpRequestBodySize(_) => HttpError::TooLarge(format!("the request body to {target}")),
        ErrorCode::HttpResponseBodySize(_) => HttpError::TooLarge(format!("the response body from {target}")),
        other => HttpError::Transport(format!("{target}: {other:?}")),
    }
}

/// The parts of a URL a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    authority: String,
    path_and_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = |why: &str| HttpError::Url(format!("`{url}`: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("only http and https are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host, or credentials in it"));
        }
        let path_and_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url {
            https,
            authority: authority.to_owned(),
            path_and_query,
        })
    }

    /// Where a `Location` header points, from this URL.
    fn join(&self, location: &str) -> String {
        if location.contains("://") {
            return location.to_owned();
        }
        let scheme = if self.https { "https" } else { "http" };
        if let Some(rest) = location.strip_prefix("//") {
            return format!("{scheme}://{rest}");
        }
        if location.starts_with('/') {
            return format!("{scheme}://{}{location}", self.authority);
        }
        let path = self.path_and_query.split('?').next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{}{dir}{location}", self.authority)
    }
}

fn send_once(request: &Request, url: &Url) -> Result<Response, HttpError> {
    let target = format!("{}://{}", if url.https { "https" } else { "http" }, url.authority);
    let mut fields: Vec<(String, Vec<u8>)> = request.headers.clone();
    // An announced length lets the host refuse a body over its cap before
    // any of it is sent, with a code that says so.
    if !request.body.is_empty() && !fields.iter().any(|(name, _)| name == "content-length") {
        fields.push((
            "content-length".into(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    let headers = Fields::from_list(&fields).map_err(|e| HttpError::Url(format!("bad header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |what: &str| HttpError::Url(format!("{target}: invalid {what}"));
    outgoing.set_method(&method).map_err(|()| invalid("method"))?;
    let scheme = if url.https { Scheme::Https } else { Scheme::Http };
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(&url.authority))
        .map_err(|()| invalid("host"))?;
    outgoing
        .set_path_with_query(Some(&url.path_and_query))
        .map_err(|()| invalid("path"))?;
    let body = outgoing.body().map_err(|()| invalid("body"))?;
    let pending = outgoing_handler::handle(outgoing, None).map_err(|code| from_code(code, &target))?;
    if !request.body.is_empty() {
        let stream = body.write().map_err(|()| invalid("body"))?;
        for chunk in request.body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                drop(stream);
                return Err(waited(&pending, &target)
                    .err()
                    .unwrap_or_else(|| stream_error(e, &target)));
            }
        }
    }
    OutgoingBody::finish(body, None).map_err(|code| from_code(code, &target))?;
    let response = waited(&pending, &target)?;
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Transport(format!("{target}: no body")))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Transport(format!("{target}: no body")))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error(e, &target)),
            }
        }
    }
    let _trailers = IncomingBody::finish(incoming);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

fn waited(
    pending: &wasip2::http::types::FutureIncomingResponse,
    target: &str,
) -> Result<wasip2::http::types::IncomingResponse, HttpError> {
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(from_code(code, target)),
        _ => Err(HttpError::Transport(format!("{target}: no response"))),
    }
}

fn stream_error(error: StreamError, target: &str) -> HttpError {
    match error {
        StreamError::Closed => HttpError::Transport(format!("{target}: the connection closed")),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => from_code(code, target),
            None => {
                // wasmtime-wasi-http 48 passes a body's error to the guest
                // as text only, without its code: recognise the cap by it.
                let text = e.to_debug_string();
                if text.contains("body size exceeds limit") {
                    HttpError::TooLarge(format!("the body from {target}"))
                } else {
                    HttpError::Transport(format!("{target}: {text}"))
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_a_request_needs() {
        let u = Url::parse("https://api.example.com:8443/v1/x?q=1#frag").unwrap();
        assert_eq!(
            (u.https, u.authority.as_str(), u.path_and_query.as_str()),
            (true, "api.example.com:8443", "/v1/x?q=1")
        );
        assert_eq!(Url::parse("http://h").unwrap().path_and_query, "/");
        assert_eq!(Url::parse("http://h?a=b").unwrap().path_and_query, "/?a=b");
        for bad in ["ftp://h/", "h/path", "http:///x", "http://user:pw@h/"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let u = Url::parse("http://a:1/dir/page?x").unwrap();
        assert_eq!(u.join("http://b:2/z"), "http://b:2/z");
        assert_eq!(u.join("/root"), "http://a:1/root");
        assert_eq!(u.join("next"), "http://a:1/dir/next");
        assert_eq!(u.join("//c/d"), "http://c/d");
    }

    #[test]
    fn a_refusal_is_final_and_a_transport_failure_retryable() {
        assert!(!StepError::from(HttpError::Denied("x".into())).is_retryable());
        assert!(StepError::from(HttpError::Transport("x".into())).is_retryable());
    }
}
