//! RFC 9457 problem details, and the layer that turns every other error
//! response (rejections, unknown routes, wrong methods) into one.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Error bodies longer than this are not quoted into a problem's detail.
const MAX_DETAIL_BYTES: usize = 64 * 1024;

/// An RFC 9457 problem: what went wrong, as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` for plain HTTP ones).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, in one line.
    pub detail: String,
    /// The line of the request body the problem is at (workflow files, JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The column, with `line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Problem {
    /// A plain problem with `status` and `detail`. Control characters in
    /// `detail` (a client's path or header quoted back, say) are escaped,
    /// so that a detail is always one line.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use stepbox::server::Problem;
    /// let p = Problem::new(StatusCode::NOT_FOUND, "no run 7");
    /// assert_eq!(p.status, 404);
    /// assert_eq!(Problem::new(StatusCode::NOT_FOUND, "no run \r\n7").detail, r"no run \r\n7");
    /// ```
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: one_line(detail.into()),
            line: None,
            column: None,
        }
    }

    /// The same problem, at `line` and `column` of the request's body.
    ///
    /// ```
    /// use stepbox::server::Problem;
    /// let p = Problem::new(axum::http::StatusCode::BAD_REQUEST, "bad").at(3, 7);
    /// assert_eq!((p.line, p.column), (Some(3), Some(7)));
    /// ```
    pub fn at(mut self, line: usize, column: usize) -> Problem {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
}

/// `detail` with its control characters escaped (`\n`, `\u{0}`...).
fn one_line(detail: String) -> String {
    if !detail.chars().any(char::is_control) {
        return detail;
    }
    let mut out = String::with_capacity(detail.len() + 8);
    for c in detail.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    out
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Middleware: an error response that is not a problem yet becomes one,
/// its text body as the detail, so no client ever parses a plain-text error.
pub async fn problems(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_DETAIL_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_owned(),
        false => text,
    };
    let mut problem = Problem::new(status, detail).into_response();
    // Keep headers such as `Allow` on a 405.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

/// For tower-http's `CatchPanicLayer`: a panic is a 500 problem.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server failed on this request",
    )
    .into_response()
}
