//! The dashboard's sessions: a browser signs in once with a tenant's token
//! and from then on carries an opaque cookie, never the token.
//!
//! - The cookie (`stepbox_session`) is `HttpOnly` (page scripts cannot read
//!   it), `SameSite=Strict` (no other site's page sends it) and `Path=/`
//!   (the dashboard calls the `/v1` API with it); `Secure` when a proxy says
//!   the request came over HTTPS.
//! - Sessions live in the server's memory only, keyed by the SHA-256 of the
//!   cookie, so a lookup compares digests rather than secrets and a memory
//!   dump holds no usable cookie. A restart signs everyone out.
//! - Every session has its own CSRF token, which the page reads from
//!   `GET /ui/session` (same-origin only: no CORS) and sends back in
//!   `X-CSRF-Token` on every state-changing request; a request that carries
//!   the cookie without it is refused. On top of that, any state-changing
//!   request a browser marks as coming from another site (`Origin`,
//!   `Sec-Fetch-Site`) is refused, with or without a session.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, header};
use sha2::Digest as _;

use super::auth::Tenant;

/// The session cookie's name.
pub const COOKIE: &str = "stepbox_session";

/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session unused this long is gone: a dashboard left open polls, so
/// this only ends sessions nobody looks at.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);

/// A session ends this long after sign-in however much it is used, so a
/// stolen cookie does not work for ever.
pub const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most sessions kept: anyone who can reach an open server can make
/// one, so they must not grow without bound; the least recently used go
/// first.
pub const MAX_SESSIONS: usize = 10_000;

/// Why a session could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The operating system's random generator failed.
    #[error("no randomness for a session: {0}")]
    Random(#[from] std::io::Error),
}

/// A signed-in browser: its tenant and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whom it acts for.
    pub tenant: Arc<Tenant>,
    /// What its state-changing requests must carry in `X-CSRF-Token`.
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    session: Session,
    created: Instant,
    used: Instant,
}

/// Every live session.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(cookie: &str) -> [u8; 32] {
    sha2::Sha256::digest(cookie.as_bytes()).into()
}

/// `n` bytes from the operating system's generator, as hex.
fn random_hex(n: usize) -> Result<String, SessionError> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Starts a session for `tenant`; returns its cookie value and the
    /// session.
    ///
    /// # Errors
    ///
    /// [`SessionError::Random`] when no random bytes can be read.
    pub fn create(&self, tenant: Arc<Tenant>) -> Result<(String, Session), SessionError> {
        let cookie = random_hex(32)?;
        let session = Session {
            tenant,
            csrf: random_hex(32)?,
        };
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, e| live(e, now));
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&cookie),
            Entry {
                session: session.clone(),
                created: now,
                used: now,
            },
        );
        Ok((cookie, session))
    }

    /// The live session of `cookie`, marked used.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let now = Instant::now();
        let key = digest(cookie);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.get_mut(&key)?;
        if !live(entry, now) {
            map.remove(&key);
            return None;
        }
        entry.used = now;
        Some(entry.session.clone())
    }

    /// Ends the session of `cookie`, if there is one.
    pub fn remove(&self, cookie: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest(cookie));
    }
}

fn live(entry: &Entry, now: Instant) -> bool {
    now.duration_since(entry.used) < IDLE && now.duration_since(entry.created) < LIFETIME
}

/// The session cookie a request carries, if any.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request came over HTTPS, as a TLS-terminating proxy says.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` that hands `value` to the browser.
pub fn set_cookie(value: &str, headers: &HeaderMap) -> HeaderValue {
    let secure = if over_https(headers) { "; Secure" } else { "" };
    let max_age = IDLE.as_secs();
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("stepbox_session=; Path=/; Max-Age=0"))
}

/// The `Set-Cookie` that makes the browser forget its session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("stepbox_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether `method` changes nothing (and so needs no CSRF check).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (digest(a), digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a browser's request is refused before it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// A state-changing request from another site's page.
    #[error("a request from another site's page is refused (Origin or Sec-Fetch-Site)")]
    CrossSite,
    /// A session's state-changing request without its CSRF token.
    #[error("the `X-CSRF-Token` header is missing or wrong for this session")]
    Csrf,
    /// An open server asked for by a name that is not loopback: a page on
    /// another site that made its name resolve to this host (DNS
    /// rebinding) reading the open API.
    #[error("an open server answers only to loopback names (localhost, 127.0.0.1, [::1])")]
    NotLoopback,
}

/// Refuses a state-changing request whose browser says it came from a page
/// of another site.
///
/// # Errors
///
/// [`Forbidden::CrossSite`].
pub fn same_origin(method: &Method, headers: &HeaderMap) -> Result<(), Forbidden> {
    if is_safe(method) {
        return Ok(());
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Forbidden::CrossSite);
    }
    if let Some(origin) = text("origin") {
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        let host = text("host");
        if authority.is_none() || authority != host {
            return Err(Forbidden::CrossSite);
        }
    }
    Ok(())
}

/// Whether a `Host` header names this machine's loopback interface.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser that could be rebound.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TenantSettings, TokenDigest};

    fn tenant() -> Arc<Tenant> {
        let tenants = super::super::auth::Tenants::new(&[TenantSettings {
            name: "acme".into(),
            tokens: vec![TokenDigest::of("good")],
            max_running: None,
            max_queued: None,
            submissions_per_second: None,
        }]);
        tenants.by_token("good").unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_is_removed() {
        let sessions = Sessions::default();
        let (cookie, session) = sessions.create(tenant()).unwrap();
        assert_eq!(cookie.len(), 64);
        assert_eq!(&*sessions.get(&cookie).unwrap().tenant.name, "acme");
        assert_eq!(sessions.get(&cookie).unwrap().csrf, session.csrf);
        assert_ne!(session.csrf, cookie);
        assert!(sessions.get("not-a-cookie").is_none());
        sessions.remove(&cookie);
        assert!(sessions.get(&cookie).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_https() {
        let plain = set_cookie("abc", &HeaderMap::new());
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("stepbox_session=abc;"), "{plain}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(plain.contains(attribute), "{plain}");
        }
        assert!(!plain.contains("Secure"));
        let proxied = set_cookie("abc", &headers(&[("x-forwarded-proto", "https")]));
        assert!(proxied.to_str().unwrap().ends_with("; Secure"));
        assert!(clear_cookie().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let h = headers(&[("cookie", "a=1; stepbox_session=xyz; b=2")]);
        assert_eq!(cookie(&h), Some("xyz"));
        assert_eq!(cookie(&headers(&[("cookie", "a=1")])), None);
        assert_eq!(cookie(&headers(&[("cookie", "stepbox_session=")])), None);
    }

    #[test]
    fn a_state_change_from_another_site_is_refused() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:7700");
        assert!(same_origin(&post, &headers(&[host])).is_ok(), "no browser");
        assert!(same_origin(&post, &headers(&[host, ("origin", "http://127.0.0.1:7700")])).is_ok());
        for bad in [
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "null")]),
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
        ] {
            assert_eq!(same_origin(&post, &bad), Err(Forbidden::CrossSite), "{bad:?}");
        }
        let evil = headers(&[host, ("origin", "http://evil.example")]);
        assert!(same_origin(&Method::GET, &evil).is_ok(), "reads change nothing");
    }

    #[test]
    fn only_loopback_names_are_loopback() {
        for good in [
            "127.0.0.1:7700",
            "localhost:1",
            "[::1]:80",
            "a.localhost",
            "127.0.0.2",
        ] {
            assert!(loopback_host(&headers(&[("host", good)])), "{good}");
        }
        for bad in [
            "evil.example:7700",
            "10.0.0.1",
            "[fe80::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", ""));
    }
}
