//! Who is calling: bearer tokens to tenants, and each tenant's quotas.
//!
//! Tokens are compared by their SHA-256 digests (the configuration holds
//! only those), in constant time, and are never logged. Without
//! `[[tenants]]` the API is open and every caller is one implicit tenant,
//! whose runs are recorded with no tenant, as the CLI's are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::session::{self, Forbidden};
use super::state::AppState;
use crate::config::{TenantSettings, TokenDigest};

/// The name the implicit tenant of an open server goes by (in paths on disk).
const OPEN_TENANT: &str = "default";

/// A tenant: its name, tokens and quotas, and what it has in flight.
#[derive(Debug)]
pub struct Tenant {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it is the implicit tenant of an open server: its runs are
    /// recorded without a tenant, and it sees every run.
    pub open: bool,
    tokens: Vec<TokenDigest>,
    /// Its running quota, handed to each of its runs.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Its runs accepted and not yet ended, and the most it may have.
    pub live: AtomicUsize,
    /// The most runs it may have accepted and not ended: its running and
    /// queued quotas together.
    pub max_live: Option<usize>,
    rate: Option<Mutex<Bucket>>,
}

impl Tenant {
    fn new(settings: &TenantSettings) -> Tenant {
        let gate = settings
            .max_running
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        let max_live = match (settings.max_running, settings.max_queued) {
            (None, None) => None,
            (running, queued) => Some(
                running
                    .unwrap_or(usize::MAX)
                    .saturating_add(queued.unwrap_or(usize::MAX)),
            ),
        };
        Tenant {
            name: settings.name.as_str().into(),
            open: false,
            tokens: settings.tokens.clone(),
            gate,
            live: AtomicUsize::new(0),
            max_live,
            rate: settings
                .submissions_per_second
                .map(|rate| Mutex::new(Bucket::new(rate))),
        }
    }

    fn open() -> Tenant {
        Tenant {
            name: OPEN_TENANT.into(),
            open: true,
            tokens: Vec::new(),
            gate: None,
            live: AtomicUsize::new(0),
            max_live: None,
            rate: None,
        }
    }

    /// The tenant a run of it is recorded with: none for an open server's.
    pub fn recorded(&self) -> Option<Arc<str>> {
        (!self.open).then(|| Arc::clone(&self.name))
    }

    /// Whether this tenant may see a run recorded with `tenant`.
    pub fn owns(&self, tenant: Option<&str>) -> bool {
        self.open || tenant == Some(&*self.name)
    }

    /// Takes `n` submissions from its rate: `Err(wait)` says when there
    /// will be room.
    pub fn take_rate(&self, n: usize) -> Result<(), Duration> {
        match &self.rate {
            None => Ok(()),
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(n as f64),
        }
    }

    /// Reserves room for `n` more live runs: `None` when its quotas are full.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Option<LiveShare> {
        let max = self.max_live.unwrap_or(usize::MAX);
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                live.checked_add(n).filter(|&total| total <= max)
            })
            .ok()?;
        Some(LiveShare {
            tenant: Arc::clone(self),
            n,
        })
    }
}

/// Room for some of a tenant's live runs, given back when dropped.
#[derive(Debug)]
pub struct LiveShare {
    tenant: Arc<Tenant>,
    n: usize,
}

impl LiveShare {
    /// Splits off room for one run.
    pub fn split_one(&mut self) -> LiveShare {
        self.n = self.n.saturating_sub(1);
        LiveShare {
            tenant: Arc::clone(&self.tenant),
            n: 1,
        }
    }
}

impl Drop for LiveShare {
    fn drop(&mut self) {
        self.tenant.live.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` per second, bursts of up to a second's worth.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `rate` per second.
    pub fn new(rate: f64) -> Bucket {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            at: Instant::now(),
        }
    }

    /// Takes `n`: `Err(wait)` says when there will be room.
    pub fn take(&mut self, n: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let burst = self.rate.max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        if n <= self.tokens {
            self.tokens -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
    }
}

/// Every tenant, and whether the server is open (no tenants configured).
#[derive(Debug)]
pub struct Tenants {
    list: Vec<Arc<Tenant>>,
}

impl Tenants {
    /// Each tenant's running quota by name, for the runs a host claims
    /// from a shared store (see [`Host::gate_tenants`](crate::Host::gate_tenants)).
    pub fn gates(&self) -> crate::host::TenantGates {
        let gates: std::collections::HashMap<String, Arc<tokio::sync::Semaphore>> = self
            .list
            .iter()
            .filter_map(|t| Some((t.name.to_string(), Arc::clone(t.gate.as_ref()?))))
            .collect();
        Box::new(move |name| gates.get(name).cloned())
    }

    /// The configured tenants; none configured makes an open server.
    pub fn new(settings: &[TenantSettings]) -> Tenants {
        let list = match settings.is_empty() {
            true => vec![Arc::new(Tenant::open())],
            false => settings.iter().map(|s| Arc::new(Tenant::new(s))).collect(),
        };
        Tenants { list }
    }

    /// Whether any caller is let in.
    pub fn is_open(&self) -> bool {
        self.list.iter().any(|t| t.open)
    }

    /// The implicit tenant of an open server.
    pub fn open_tenant(&self) -> Option<Arc<Tenant>> {
        self.list.iter().find(|t| t.open).cloned()
    }

    /// The tenant `token` acts for, if any (never the open one: it has no
    /// tokens).
    pub fn by_token(&self, token: &str) -> Option<Arc<Tenant>> {
        // Every tenant's every digest is compared, so the time taken does
        // not say which tenant came close.
        let mut found = None;
        for tenant in &self.list {
            for digest in &tenant.tokens {
                if digest.matches(token) {
                    found = Some(Arc::clone(tenant));
                }
            }
        }
        found
    }

    /// The tenant a request's bearer token acts for.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, Unauthorized> {
        if let Some(open) = self.open_tenant() {
            return Ok(open);
        }
        let token = bearer(headers).ok_or(Unauthorized("an `Authorization: Bearer` token is needed"))?;
        self.by_token(token)
            .ok_or(Unauthorized("the bearer token is not valid"))
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A 401, with the challenge RFC 6750 asks for.
#[derive(Debug)]
pub struct Unauthorized(pub &'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = Problem::new(StatusCode::UNAUTHORIZED, self.0).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Why a `/v1` request is not let in.
#[derive(Debug)]
pub enum Refusal {
    /// No valid token or session: 401.
    Unauthorized(Unauthorized),
    /// A browser's request that may not do what it asks: 403.
    Forbidden(Forbidden),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(e) => e.into_response(),
            Refusal::Forbidden(e) => Problem::new(StatusCode::FORBIDDEN, e.to_string()).into_response(),
        }
    }
}

impl From<Forbidden> for Refusal {
    fn from(e: Forbidden) -> Refusal {
        Refusal::Forbidden(e)
    }
}

/// The tenant a `/v1` request acts for: by its bearer token, or by the
/// dashboard's session cookie (then a state-changing request must carry
/// the session's CSRF token). An extractor that answers 401 without
/// either, and 403 for what a browser may not do (see [`super::session`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Tenant>);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller, Refusal> {
        let headers = &parts.headers;
        session::same_origin(&parts.method, headers)?;
        let open = state.tenants.is_open();
        if open && !session::loopback_host(headers) {
            return Err(Forbidden::NotLoopback.into());
        }
        if bearer(headers).is_none()
            && let Some(cookie) = session::cookie(headers)
        {
            match state.sessions.get(cookie) {
                Some(found) => {
                    if !session::is_safe(&parts.method) {
                        let sent = headers
                            .get(session::CSRF_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if !session::same_secret(sent, &found.csrf) {
                            return Err(Forbidden::Csrf.into());
                        }
                    }
                    return Ok(Caller(found.tenant));
                }
                None if !open => {
                    return Err(Refusal::Unauthorized(Unauthorized(
                        "the session has ended: sign in again at /ui/login",
                    )));
                }
                None => {}
            }
        }
        state
            .tenants
            .authenticate(headers)
            .map(Caller)
            .map_err(Refusal::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(max_running: Option<usize>, max_queued: Option<usize>, rate: Option<f64>) -> Tenants {
        Tenants::new(&[TenantSettings {
            name: "acme".into(),
            tokens: vec![TokenDigest::of("good")],
            max_running,
            max_queued,
            submissions_per_second: rate,
        }])
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn only_a_configured_token_acts_for_its_tenant() {
        let tenants = acme(None, None, None);
        assert_eq!(&*tenants.authenticate(&with_token("good")).unwrap().name, "acme");
        assert!(tenants.authenticate(&with_token("bad")).is_err());
        assert!(tenants.authenticate(&HeaderMap::new()).is_err());
        assert!(!tenants.is_open());
        let open = Tenants::new(&[]);
        assert!(open.is_open() && open.authenticate(&HeaderMap::new()).unwrap().open);
    }

    #[test]
    fn live_runs_are_held_to_running_plus_queued_and_given_back() {
        let tenants = acme(Some(1), Some(2), None);
        let tenant = tenants.authenticate(&with_token("good")).unwrap();
        let mut two = tenant.reserve(2).unwrap();
        assert!(tenant.reserve(2).is_none(), "3 + 2 > 1 + 2");
        let one = two.split_one();
        drop(two);
        assert!(tenant.reserve(2).is_some(), "the other was given back");
        drop(one);
        assert_eq!(tenant.live.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_rate_refuses_a_burst_and_says_how_long_to_wait() {
        let tenants = acme(None, None, Some(2.0));
        let tenant = tenants.authenticate(&with_token("good")).unwrap();
        assert!(tenant.take_rate(2).is_ok());
        let wait = tenant.take_rate(1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
