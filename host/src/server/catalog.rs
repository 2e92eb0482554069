//! What tenants uploaded: components by digest, workflows by name, kept on
//! disk under the server's data directory (one directory per tenant) and
//! prepared once per upload.
//!
//! On a store that several hosts share (PostgreSQL), the store holds the
//! uploads, and the disk is each host's copy of the components it ran:
//! a workflow uploaded to one host can be submitted to any. A host checks
//! the version of a workflow it prepared at most once every [`FRESH`], so
//! a workflow replaced through one host is used by every host within it.
//!
//! A workflow names its components by uploaded digest (`component:
//! sha256:HEX`); the catalog points each step at the tenant's copy, so a
//! tenant's workflow can use only the tenant's components.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::host::write_atomically;
use crate::scheduler::{PrepareError, PreparedWorkflow, Scheduler};
use crate::store::{StoreError, StoreReader, UploadStore};
use crate::workflow::{Location, Workflow};

/// How long a host uses a workflow it prepared before it asks the shared
/// store whether another host replaced it.
pub const FRESH: Duration = Duration::from_secs(1);

/// Why an upload or a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The body is not a step component.
    #[error("{0}")]
    NotComponent(String),
    /// The workflow is invalid, at `location` when it has one.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// Where, in the uploaded text.
        location: Option<Location>,
    },
    /// No such workflow (for this tenant).
    #[error("no workflow `{0}`")]
    NoWorkflow(String),
    /// The data directory could not be read or written.
    #[error("the server's data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The store that hosts share could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// What the shared store holds is not what was uploaded.
    #[error("{0}")]
    Damaged(String),
}

/// A workflow as uploaded.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Its text.
    pub text: String,
    /// Whether it is JSON (else YAML).
    pub json: bool,
}

/// A tenant's workflow, by (tenant, name).
type WorkflowKey = (Arc<str>, String);

/// The catalog of every tenant.
pub struct Catalog {
    root: PathBuf,
    /// The host's store: it keeps the uploads when hosts share it.
    store: Arc<dyn StoreReader>,
    /// (tenant, workflow) → prepared, for workflows used since they were
    /// uploaded or since the server started.
    prepared: Mutex<HashMap<WorkflowKey, Prepared>>,
}

/// A workflow prepared, the version of it the shared store had, and when
/// that was last checked.
#[derive(Clone)]
struct Prepared {
    workflow: Arc<PreparedWorkflow>,
    version: i64,
    checked: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `name` can name a workflow in a path: 1 to 128 letters, digits,
/// `-`, `_` and `.`, not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Catalog {
    /// The catalog kept under `root`, and in `store` if hosts share it.
    pub fn new(root: PathBuf, store: Arc<dyn StoreReader>) -> Catalog {
        Catalog {
            root,
            store,
            prepared: Mutex::new(HashMap::new()),
        }
    }

    fn shared(&self) -> Option<&dyn UploadStore> {
        self.store.uploads()
    }

    fn keep(&self, tenant: &Arc<str>, name: &str, workflow: &Arc<PreparedWorkflow>, version: i64) {
        let prepared = Prepared {
            workflow: Arc::clone(workflow),
            version,
            checked: Instant::now(),
        };
        lock(&self.prepared).insert((Arc::clone(tenant), name.to_owned()), prepared);
    }

    /// The path of component `hex` of `tenant` on this host's disk,
    /// fetched from the shared store if this host does not have it yet;
    /// `None` if it was never uploaded.
    fn component_file(&self, tenant: &str, hex: &str) -> Result<Option<PathBuf>, CatalogError> {
        let dir = self.components_dir(tenant);
        let path = dir.join(format!("{hex}.wasm"));
        if path.is_file() {
            return Ok(Some(path));
        }
        let Some(shared) = self.shared() else {
            return Ok(None);
        };
        let Some(bytes) = shared.component(tenant, &format!("sha256:{hex}"))? else {
            return Ok(None);
        };
        // The name is the promise that the bytes are the ones uploaded.
        if self::hex(&sha2::Sha256::digest(&bytes)) != hex {
            return Err(CatalogError::Damaged(format!(
                "component sha256:{hex} in the shared store does not match its digest"
            )));
        }
        std::fs::create_dir_all(&dir)?;
        write_atomically(&path, &bytes)?;
        Ok(Some(path))
    }

    fn components_dir(&self, tenant: &str) -> PathBuf {
        self.root.join(tenant).join("components")
    }

    fn workflows_dir(&self, tenant: &str) -> PathBuf {
        self.root.join(tenant).join("workflows")
    }

    /// Checks that `bytes` are a step component (compiling it, so call this
    /// off the async threads) and keeps it for `tenant`; returns its digest,
    /// `sha256:HEX`, and whether it is new.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotComponent`] with the sandbox's reason.
    pub fn put_component(
        &self,
        scheduler: &Scheduler,
        tenant: &str,
        bytes: &[u8],
    ) -> Result<(String, bool), CatalogError> {
        let hex = hex(&sha2::Sha256::digest(bytes));
        let name = format!("sha256:{hex}");
        scheduler
            .runner()
            .load_bytes(&name, bytes)
            .map_err(|e| CatalogError::NotComponent(e.to_string()))?;
        let dir = self.components_dir(tenant);
        let path = dir.join(format!("{hex}.wasm"));
        let mut new = !path.is_file();
        if new {
            std::fs::create_dir_all(&dir)?;
            write_atomically(&path, bytes)?;
        }
        if let Some(shared) = self.shared() {
            new = shared.put_component(tenant, &name, bytes)?;
        }
        Ok((name, new))
    }

    /// Checks workflow `name` and keeps it for `tenant`, replacing the one
    /// of that name; prepares it (compiling its components: call this off
    /// the async threads). Returns it prepared, and whether it is new.
    ///
    /// # Errors
    ///
    /// [`CatalogError::Invalid`] with the position of what is wrong.
    pub fn put_workflow(
        &self,
        scheduler: &Scheduler,
        tenant: &Arc<str>,
        name: &str,
        uploaded: &Uploaded,
    ) -> Result<(Arc<PreparedWorkflow>, bool), CatalogError> {
        let prepared = self.prepare(scheduler, tenant, name, uploaded)?;
        // Where hosts share the store, it alone keeps workflows: a copy on
        // this disk would only be found by `publish`, bringing back what
        // the store no longer has.
        let (existed, version) = match self.shared() {
            Some(shared) => (
                shared.workflow_version(tenant, name)?.is_some(),
                shared.put_workflow(tenant, name, &uploaded.text, uploaded.json)?,
            ),
            None => {
                let existed = self.uploaded(tenant, name)?.is_some();
                self.write_to_disk(tenant, name, uploaded)?;
                (existed, 0)
            }
        };
        self.keep(tenant, name, &prepared, version);
        Ok((prepared, !existed))
    }

    /// Keeps workflow `name` of `tenant` in this host's data directory,
    /// in place of one of that name in either format.
    fn write_to_disk(&self, tenant: &str, name: &str, uploaded: &Uploaded) -> Result<(), CatalogError> {
        let dir = self.workflows_dir(tenant);
        std::fs::create_dir_all(&dir)?;
        let (keep, other) = match uploaded.json {
            true => ("json", "yaml"),
            false => ("yaml", "json"),
        };
        write_atomically(&dir.join(format!("{name}.{keep}")), uploaded.text.as_bytes())?;
        match std::fs::remove_file(dir.join(format!("{name}.{other}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Workflow `name` of `tenant`, prepared (on first use after a start:
    /// call this off the async threads).
    ///
    /// # Errors
    ///
    /// [`CatalogError::NoWorkflow`] when it was never uploaded.
    pub fn workflow(
        &self,
        scheduler: &Scheduler,
        tenant: &Arc<str>,
        name: &str,
    ) -> Result<Arc<PreparedWorkflow>, CatalogError> {
        if let Some(hit) = self.cached(tenant, name) {
            return Ok(hit);
        }
        let key = (Arc::clone(tenant), name.to_owned());
        let Some(shared) = self.shared() else {
            let uploaded = self
                .uploaded(tenant, name)?
                .ok_or_else(|| CatalogError::NoWorkflow(name.to_owned()))?;
            let prepared = self.prepare(scheduler, tenant, name, &uploaded)?;
            self.keep(tenant, name, &prepared, 0);
            return Ok(prepared);
        };
        let held = lock(&self.prepared).get(&key).cloned();
        let Some(version) = shared.workflow_version(tenant, name)? else {
            lock(&self.prepared).remove(&key);
            return match self.disk_uploaded(tenant, name)? {
                Some(local) => self.publish(scheduler, tenant, name, &local),
                None => Err(CatalogError::NoWorkflow(name.to_owned())),
            };
        };
        if let Some(held) = held.filter(|h| h.version == version) {
            self.keep(tenant, name, &held.workflow, version);
            return Ok(held.workflow);
        }
        let stored = shared
            .workflow(tenant, name)?
            .ok_or_else(|| CatalogError::NoWorkflow(name.to_owned()))?;
        let uploaded = Uploaded {
            text: stored.text,
            json: stored.json,
        };
        let prepared = self.prepare(scheduler, tenant, name, &uploaded)?;
        self.keep(tenant, name, &prepared, stored.version);
        Ok(prepared)
    }

    /// Workflow `name` of `tenant` if it is prepared already (and, when
    /// hosts share the store, was checked within [`FRESH`]): without
    /// blocking, for the path every submission takes.
    pub fn cached(&self, tenant: &Arc<str>, name: &str) -> Option<Arc<PreparedWorkflow>> {
        let shared = self.shared().is_some();
        lock(&self.prepared)
            .get(&(Arc::clone(tenant), name.to_owned()))
            .filter(|p| !shared || p.checked.elapsed() < FRESH)
            .map(|p| Arc::clone(&p.workflow))
    }

    /// Workflow `name` of `tenant` as uploaded, if it was.
    ///
    /// # Errors
    ///
    /// [`CatalogError::Io`] when it cannot be read.
    pub fn uploaded(&self, tenant: &str, name: &str) -> Result<Option<Uploaded>, CatalogError> {
        if !valid_name(name) {
            return Ok(None);
        }
        if let Some(shared) = self.shared() {
            return Ok(shared.workflow(tenant, name)?.map(|w| Uploaded {
                text: w.text,
                json: w.json,
            }));
        }
        self.disk_uploaded(tenant, name)
    }

    /// Workflow `name` of `tenant` as this host's disk has it.
    fn disk_uploaded(&self, tenant: &str, name: &str) -> Result<Option<Uploaded>, CatalogError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let dir = self.workflows_dir(tenant);
        for (ext, json) in [("yaml", false), ("json", true)] {
            match std::fs::read_to_string(dir.join(format!("{name}.{ext}"))) {
                Ok(text) => return Ok(Some(Uploaded { text, json })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Puts a workflow that only this host's disk has into the shared
    /// store, with its components: one uploaded to this host before hosts
    /// shared uploads, found on its first use since.
    fn publish(
        &self,
        scheduler: &Scheduler,
        tenant: &Arc<str>,
        name: &str,
        local: &Uploaded,
    ) -> Result<Arc<PreparedWorkflow>, CatalogError> {
        let prepared = self.prepare(scheduler, tenant, name, local)?;
        let Some(shared) = self.shared() else {
            return Ok(prepared);
        };
        let mut components: Vec<&Path> = prepared.workflow().steps.iter().map(|s| &*s.component).collect();
        components.sort();
        components.dedup();
        for path in components {
            let Some(hex) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            shared.put_component(tenant, &format!("sha256:{hex}"), &std::fs::read(path)?)?;
        }
        let version = shared.put_workflow(tenant, name, &local.text, local.json)?;
        self.keep(tenant, name, &prepared, version);
        Ok(prepared)
    }

    /// The names of `tenant`'s workflows, sorted.
    ///
    /// # Errors
    ///
    /// [`CatalogError::Io`] when the directory cannot be read.
    pub fn workflow_names(&self, tenant: &str) -> Result<Vec<String>, CatalogError> {
        if let Some(shared) = self.shared() {
            return Ok(shared.workflow_names(tenant)?);
        }
        let mut names = match std::fs::read_dir(self.workflows_dir(tenant)) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let path = e.path();
                    let ext = path.extension()?.to_str()?;
                    matches!(ext, "yaml" | "json")
                        .then(|| path.file_stem()?.to_str().map(str::to_owned))
                        .flatten()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn prepare(
        &self,
        scheduler: &Scheduler,
        tenant: &str,
        name: &str,
        uploaded: &Uploaded,
    ) -> Result<Arc<PreparedWorkflow>, CatalogError> {
        let source = self.workflows_dir(tenant).join(match uploaded.json {
            true => format!("{name}.json"),
            false => format!("{name}.yaml"),
        });
        let mut workflow =
            Workflow::from_str(&uploaded.text, &source).map_err(|e| CatalogError::Invalid {
                message: e.kind.to_string(),
                location: (e.line > 0).then(|| e.location()),
            })?;
        if workflow.name != name {
            return Err(CatalogError::Invalid {
                message: format!(
                    "the workflow is named `{}`, but was uploaded as `{name}`: the names must match",
                    workflow.name
                ),
                location: None,
            });
        }
        let mut resolved: HashMap<Arc<std::path::Path>, Arc<std::path::Path>> = HashMap::new();
        for step in &mut workflow.steps {
            if let Some(path) = resolved.get(&step.component) {
                step.component = Arc::clone(path);
                continue;
            }
            let written = step
                .component
                .strip_prefix(source.parent().unwrap_or(Path::new("")))
                .ok()
                .and_then(Path::to_str)
                .unwrap_or_default();
            let hex = written
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase);
            let at = Some(step.component_location);
            let Some(hex) = hex else {
                return Err(CatalogError::Invalid {
                    message: format!(
                        "step `{}`: `component` must name an uploaded component by its digest (`sha256:` and 64 hex digits, as PUT /v1/components answers), not `{written}`",
                        step.id
                    ),
                    location: at,
                });
            };
            let Some(path) = self.component_file(tenant, &hex)? else {
                return Err(CatalogError::Invalid {
                    message: format!(
                        "step `{}`: component `sha256:{hex}` was not uploaded (PUT /v1/components)",
                        step.id
                    ),
                    location: at,
                });
            };
            let path: Arc<Path> = path.into();
            resolved.insert(Arc::clone(&step.component), Arc::clone(&path));
            step.component = path;
        }
        scheduler.prepare(workflow).map_err(|e| match e {
            PrepareError::Workflow(e) => CatalogError::Invalid {
                message: e.kind.to_string(),
                location: (e.line > 0).then(|| e.location()),
            },
            other => CatalogError::Invalid {
                message: other.to_string(),
                location: None,
            },
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_names_that_could_leave_the_directory_are_not_valid() {
        assert!(valid_name("wordcount") && valid_name("etl-v2.1"));
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "a b", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
