//! What tenants uploaded: components by digest, workflows by name, kept on
//! disk under the server's data directory (one directory per tenant) and
//! prepared once per upload.
//!
//! A workflow names its components by uploaded digest (`component:
//! sha256:HEX`); the catalog points each step at the tenant's copy, so a
//! tenant's workflow can use only the tenant's components.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::Digest as _;

use crate::host::write_atomically;
use crate::scheduler::{PrepareError, PreparedWorkflow, Scheduler};
use crate::workflow::{Location, Workflow};

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
    /// (tenant, workflow) → prepared, for workflows used since they were
    /// uploaded or since the server started.
    prepared: Mutex<HashMap<WorkflowKey, Arc<PreparedWorkflow>>>,
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
    /// The catalog kept under `root`.
    pub fn new(root: PathBuf) -> Catalog {
        Catalog {
            root,
            prepared: Mutex::new(HashMap::new()),
        }
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
        if path.is_file() {
            return Ok((name, false));
        }
        std::fs::create_dir_all(&dir)?;
        write_atomically(&path, bytes)?;
        Ok((name, true))
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
        let dir = self.workflows_dir(tenant);
        let prepared = self.prepare(scheduler, tenant, name, uploaded)?;
        std::fs::create_dir_all(&dir)?;
        let (keep, other) = match uploaded.json {
            true => ("json", "yaml"),
            false => ("yaml", "json"),
        };
        let existed = self.uploaded(tenant, name)?.is_some();
        write_atomically(&dir.join(format!("{name}.{keep}")), uploaded.text.as_bytes())?;
        match std::fs::remove_file(dir.join(format!("{name}.{other}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        lock(&self.prepared).insert((Arc::clone(tenant), name.to_owned()), Arc::clone(&prepared));
        Ok((prepared, !existed))
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
        let key = (Arc::clone(tenant), name.to_owned());
        if let Some(hit) = lock(&self.prepared).get(&key) {
            return Ok(Arc::clone(hit));
        }
        let uploaded = self
            .uploaded(tenant, name)?
            .ok_or_else(|| CatalogError::NoWorkflow(name.to_owned()))?;
        let prepared = self.prepare(scheduler, tenant, name, &uploaded)?;
        lock(&self.prepared).insert(key, Arc::clone(&prepared));
        Ok(prepared)
    }

    /// Workflow `name` of `tenant` if it is prepared already: without
    /// blocking, for the path every submission takes.
    pub fn cached(&self, tenant: &Arc<str>, name: &str) -> Option<Arc<PreparedWorkflow>> {
        lock(&self.prepared)
            .get(&(Arc::clone(tenant), name.to_owned()))
            .cloned()
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

    /// The names of `tenant`'s workflows, sorted.
    ///
    /// # Errors
    ///
    /// [`CatalogError::Io`] when the directory cannot be read.
    pub fn workflow_names(&self, tenant: &str) -> Result<Vec<String>, CatalogError> {
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
        let components = self.components_dir(tenant);
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
            let path: Arc<Path> = components.join(format!("{hex}.wasm")).into();
            if !path.is_file() {
                return Err(CatalogError::Invalid {
                    message: format!(
                        "step `{}`: component `sha256:{hex}` was not uploaded (PUT /v1/components)",
                        step.id
                    ),
                    location: at,
                });
            }
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
