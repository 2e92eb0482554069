//! The dashboard at `/ui/`: its pages and assets (embedded in the binary:
//! nothing is fetched from elsewhere, it works offline), sign-in and
//! sign-out. The pages are one HTML shell; its script draws each page
//! from the `/v1` API, which it calls with the session cookie (see
//! [`super::session`]).
//!
//! Sign-in: `/ui/login?token=TOKEN` (the link `stepbox serve` prints, as
//! Jupyter's does) or the form at `/ui/login`, with a tenant's bearer
//! token. An open server (no `[[tenants]]`, loopback only) needs none: a
//! visit to `/ui/` starts a session of the implicit tenant.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest as _;

use super::auth::{Tenant, Unauthorized};
use super::problem::Problem;
use super::session::{self, Forbidden, Session};
use super::state::AppState;

/// Refused sign-ins answered per second, server-wide (in bursts of as
/// many); more are answered 429. Tokens from `stepbox token new` cannot be
/// guessed at any rate, but an operator may have chosen a weak one.
pub const REFUSED_SIGN_INS: f64 = 5.0;

/// The page shell every dashboard page is drawn in.
const INDEX: &str = include_str!("ui/index.html");
/// The sign-in page.
const LOGIN: &str = include_str!("ui/login.html");

/// The assets under `/ui/assets/`: name, media type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "run.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/run.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/pages.js"),
    ),
    (
        "login.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/login.js"),
    ),
    ("favicon.svg", "image/svg+xml", include_str!("ui/favicon.svg")),
];

/// What the pages may load and do: only this server's own scripts,
/// styles and API, and nobody may frame them.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers every dashboard answer carries.
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The sign-in link carries a token in its URL: never pass it on.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn html(body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    harden(&mut response);
    response
}

fn see_other(location: &'static str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    harden(&mut response);
    response
}

fn forbidden(e: Forbidden) -> Response {
    Problem::new(StatusCode::FORBIDDEN, e.to_string()).into_response()
}

/// The request's live session, if it carries one.
fn current(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    session::cookie(headers).and_then(|c| state.sessions.get(c))
}

/// Starts a session for `tenant` and answers with `response` carrying
/// its cookie.
fn start(state: &AppState, tenant: Arc<Tenant>, headers: &HeaderMap, mut response: Response) -> Response {
    match state.sessions.create(tenant) {
        Ok((cookie, _)) => {
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::set_cookie(&cookie, headers));
            response
        }
        Err(e) => {
            tracing::warn!("{e}");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "cannot start a session now").into_response()
        }
    }
}

/// `GET /ui`: the dashboard lives under `/ui/`.
pub async fn root() -> Response {
    see_other("/ui/")
}

/// `GET /ui/` and every page under it: the shell, for a signed-in
/// browser; else the sign-in page (or, on an open server, a new session).
pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let open = state.tenants.open_tenant();
    if open.is_some() && !session::loopback_host(&headers) {
        return forbidden(Forbidden::NotLoopback);
    }
    if current(&state, &headers).is_some() {
        return html(INDEX);
    }
    match open {
        Some(tenant) => start(&state, tenant, &headers, html(INDEX)),
        None => see_other("/ui/login"),
    }
}

/// `GET /ui/assets/{file}`: public, the same for everyone; revalidated by
/// their `ETag` so a new build's are used at once.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| {
                let hash = sha2::Sha256::digest(body.as_bytes());
                let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    let Some(i) = ASSETS.iter().position(|(name, _, _)| *name == file) else {
        return Problem::new(StatusCode::NOT_FOUND, format!("no asset {file}")).into_response();
    };
    let (_, media, body) = ASSETS[i];
    let tag = &tags[i];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = match matches {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => ([(header::CONTENT_TYPE, media)], body).into_response(),
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, tag);
    }
    harden(&mut response);
    response
}

/// `?token=` on the sign-in page.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    token: Option<String>,
}

/// `GET /ui/login`: with `?token=`, signs in and goes to `/ui/`;
/// without, the sign-in form.
pub async fn login_page(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    if state.tenants.is_open() {
        return see_other("/ui/");
    }
    match query.token {
        Some(token) => sign_in(&state, &token, &headers),
        None => html(LOGIN),
    }
}

fn sign_in(state: &AppState, token: &str, headers: &HeaderMap) -> Response {
    // A sign-in always starts a new session: one the browser had before
    // (perhaps planted by someone else) ends.
    if let Some(old) = session::cookie(headers) {
        state.sessions.remove(old);
    }
    let throttled = |state: &AppState| {
        state
            .refused_sign_ins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(1.0)
            .err()
    };
    match state.tenants.by_token(token.trim()) {
        Some(tenant) => start(state, tenant, headers, see_other("/ui/")),
        None => match throttled(state) {
            None => Unauthorized("that token is not a tenant's token: sign-in refused").into_response(),
            Some(wait) => {
                let mut response = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many refused sign-ins: wait before trying again",
                )
                .into_response();
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                response
            }
        },
    }
}

/// `POST /ui/login`: the form's token (`token=` form-encoded, or JSON
/// `{"token": ...}`); from this server's own page only.
pub async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = session::same_origin(&axum::http::Method::POST, &headers) {
        return forbidden(e);
    }
    if state.tenants.is_open() {
        return see_other("/ui/");
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let token = match json {
        true => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned)),
        false => form_value(&body, "token"),
    };
    match token {
        Some(token) if !token.trim().is_empty() => sign_in(&state, &token, &headers),
        _ => Problem::new(StatusCode::BAD_REQUEST, "say the token: `token=...`").into_response(),
    }
}

/// The value of `name` in a form-encoded body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /ui/logout`: ends the session (its CSRF token required).
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = session::same_origin(&axum::http::Method::POST, &headers) {
        return forbidden(e);
    }
    if let Some(cookie) = session::cookie(&headers)
        && let Some(found) = state.sessions.get(cookie)
    {
        let sent = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session::same_secret(sent, &found.csrf) {
            return forbidden(Forbidden::Csrf);
        }
        state.sessions.remove(cookie);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

/// `GET /ui/session`: whom the browser acts for and its CSRF token (for
/// its own pages only: no other origin may read it).
pub async fn whoami(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let open = state.tenants.open_tenant();
    if open.is_some() && !session::loopback_host(&headers) {
        return forbidden(Forbidden::NotLoopback);
    }
    let view = |s: &Session| {
        let mut response = axum::Json(json!({
            "tenant": &*s.tenant.name,
            "open": s.tenant.open,
            "csrf": s.csrf,
        }))
        .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    if let Some(found) = current(&state, &headers) {
        return view(&found);
    }
    let Some(tenant) = open else {
        return Unauthorized("not signed in: sign in at /ui/login").into_response();
    };
    match state.sessions.create(tenant) {
        Ok((cookie, found)) => {
            let mut response = view(&found);
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::set_cookie(&cookie, &headers));
            response
        }
        Err(e) => {
            tracing::warn!("{e}");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "cannot start a session now").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_decoded() {
        assert_eq!(
            form_value(b"a=1&token=sbx_ab%2Bc+d", "token").as_deref(),
            Some("sbx_ab+c d")
        );
        assert_eq!(form_value(b"token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(form_value(b"other=1", "token"), None);
        assert_eq!(form_value(&[0xff, b'='], "token"), None);
    }
}
