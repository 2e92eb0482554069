//! What every handler shares.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use super::auth::{Bucket, Tenants};
use super::catalog::Catalog;
use super::session::Sessions;
use crate::config::ServerSettings;
use crate::host::Host;
use crate::store::StoreReader;

/// The server's state: the host, a reader of its store, the tenants and
/// their catalog.
pub struct AppState {
    /// The host that runs the steps.
    pub host: Arc<Host>,
    /// Queries of the host's store, shared by every request.
    pub reader: Arc<dyn StoreReader>,
    /// Who may call.
    pub tenants: Tenants,
    /// What they uploaded.
    pub catalog: Catalog,
    /// The `[server]` settings.
    pub settings: ServerSettings,
    /// Idempotency keys being submitted right now, so that two requests
    /// with one key never both submit.
    pub keys: KeyLocks,
    /// Requests whose handler panicked (answered 500).
    pub panics: Arc<AtomicU64>,
    /// Submissions refused with 429, by cause.
    pub throttled: AtomicU64,
    /// The dashboard's signed-in browsers.
    pub sessions: Sessions,
    /// Refused sign-ins, held to a rate so that guessing tokens is slow.
    pub refused_sign_ins: Mutex<Bucket>,
    /// The host's recent throughput, computed at most once a second
    /// however many dashboards ask.
    pub throughput: Mutex<Option<(std::time::Instant, serde_json::Value)>>,
}

/// One async lock per (tenant, idempotency key) in use.
#[derive(Debug, Default)]
pub struct KeyLocks(Mutex<HashMap<TenantKey, Arc<tokio::sync::Mutex<()>>>>);

/// An idempotency key of a tenant.
type TenantKey = (Arc<str>, String);

impl KeyLocks {
    /// Holds `key` of `tenant` until the guard drops.
    pub async fn hold(&self, tenant: &Arc<str>, key: &str) -> KeyGuard<'_> {
        let id = (Arc::clone(tenant), key.to_owned());
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(id.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        KeyGuard {
            locks: self,
            id,
            guard: Some(guard),
        }
    }
}

/// A held idempotency key.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    id: TenantKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the key once no other request holds or waits for it.
        if map.get(&self.id).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            map.remove(&self.id);
        }
    }
}
