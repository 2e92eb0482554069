//! `fetch`: calls an HTTP API and returns its answer. It can only reach what
//! its workflow step grants (`allow_http`), and authenticates with a secret
//! it is granted (`secrets`).
//!
//! ```text
//! API_TOKEN=… stepbox step fetch.wasm --allow-http api.example.com:443 --secret API_TOKEN \
//!     --input '{"url": "https://api.example.com/v1/status", "bearer": "API_TOKEN"}'
//! {"status":200,"body":{"ok":true}}
//! ```
//!
//! Input: `url`; optional `method` (default `GET`), `body` (any JSON, sent as
//! JSON), `bearer` (the name of a secret sent as `Authorization: Bearer …`),
//! `repeat` (send it this many times, for load; default 1). Output: the last
//! response's `status` and `body` (JSON when it parses, else text).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stepbox_guest::StepError;
use stepbox_guest::http::Request;

/// The step's input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Where to send it.
    pub url: String,
    /// The method; `GET` by default.
    #[serde(default)]
    pub method: Option<String>,
    /// A JSON body.
    #[serde(default)]
    pub body: Option<Value>,
    /// The secret that holds a bearer token.
    #[serde(default)]
    pub bearer: Option<String>,
    /// How many times to send it.
    #[serde(default)]
    pub repeat: Option<u32>,
}

/// The step's output.
#[derive(Serialize)]
pub struct Answer {
    /// The response's status code.
    pub status: u16,
    /// Its body: JSON if it parses, else text.
    pub body: Value,
}

/// Sends the request and returns the answer; a refused or failed request is
/// the step's error (a refusal is final, a transport failure retryable).
pub fn fetch(call: Call) -> Result<Answer, StepError> {
    let method = call.method.as_deref().unwrap_or("GET");
    let mut request = Request::new(method, &call.url);
    if let Some(name) = &call.bearer {
        let token = stepbox_guest::secret(name)
            .ok_or_else(|| StepError::failed(format!("secret `{name}` is not granted to this step")))?;
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let mut last = None;
    for _ in 0..call.repeat.unwrap_or(1).max(1) {
        let response = request.clone().send()?;
        stepbox_guest::info(format!("{method} {} -> {}", call.url, response.status));
        last = Some(response);
    }
    let response = last.expect("at least one request is sent");
    let body = match response.json::<Value>() {
        Ok(json) => json,
        Err(_) => Value::String(String::from_utf8_lossy(&response.body).into_owned()),
    };
    Ok(Answer {
        status: response.status,
        body,
    })
}

stepbox_guest::step!(fetch);
