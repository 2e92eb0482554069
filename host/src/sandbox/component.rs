//! Loaded step components and what can be learnt about a component file.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentExtern, ComponentItem};
use wasmtime::component::{Component, Linker};

use super::bindings::StepPre;
use super::cache::hex;
use super::instance::InstanceState;

/// A component loaded into a [`Sandbox`](crate::Sandbox): compiled, checked
/// against the step world and pre-instantiated, ready to run many times.
///
/// Cheap to clone; clones share the compiled code.
#[derive(Clone)]
pub struct StepComponent {
    pub(crate) inner: Arc<Loaded>,
}

pub(crate) struct Loaded {
    pub(crate) digest: Digest,
    pub(crate) name: String,
    pub(crate) pre: StepPre<InstanceState>,
}

impl StepComponent {
    /// The SHA-256 digest of the component's bytes: its identity in caches and journals.
    pub fn digest(&self) -> Digest {
        self.inner.digest
    }

    /// The name it was loaded under (its path, for files).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl fmt::Debug for StepComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepComponent")
            .field("name", &self.inner.name)
            .field("digest", &self.inner.digest)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 digest of a component's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// let digest = stepbox::sandbox::Digest::of(b"");
    /// assert!(digest.to_string().starts_with("e3b0c442"));
    /// ```
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("`{name}` is not a WebAssembly file (it does not start with the wasm magic bytes)")]
    NotWasm {
        /// The file or name it was loaded under.
        name: String,
    },
    /// The bytes are a core module, not a component.
    #[error(
        "`{name}` is a core WebAssembly module, not a component: build the step for the wasm32-wasip2 target"
    )]
    CoreModule {
        /// The file or name it was loaded under.
        name: String,
    },
    /// The bytes are WebAssembly, but not a component this host can compile.
    #[error("`{name}` is not a valid component: {message}")]
    Invalid {
        /// The file or name it was loaded under.
        name: String,
        /// What the compiler found.
        message: String,
    },
    /// A valid component, but not for the step world.
    #[error("`{name}` does not fit the stepbox step world: {}", problems.join("; "))]
    WrongWorld {
        /// The file or name it was loaded under.
        name: String,
        /// What is missing or mismatched.
        problems: Vec<String>,
    },
}

/// What a component imports and exports, and whether it fits the step world.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// The component's digest.
    pub digest: String,
    /// Its imports, by name, with their kind.
    pub imports: Vec<Item>,
    /// Its exports, by name, with their kind.
    pub exports: Vec<Item>,
    /// Why it does not fit the step world; empty when it fits.
    pub problems: Vec<String>,
}

impl ComponentInfo {
    /// Whether the component can run as a step.
    pub fn fits(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One import or export of a component.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Its name, such as `wasi:io/streams@0.2.3` or `run`.
    pub name: String,
    /// What it is: `instance`, `func`, `type`, …
    pub kind: &'static str,
}

/// Checks the preamble, so the common mistakes get a precise error rather
/// than a parser message.
pub(crate) fn check_preamble(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm { name: name.into() });
    }
    match bytes[4..8] {
        ref v if v == COMPONENT => Ok(()),
        ref v if v == CORE => Err(LoadError::CoreModule { name: name.into() }),
        _ => Err(LoadError::Invalid {
            name: name.into(),
            message: "unsupported WebAssembly version or layer".into(),
        }),
    }
}

pub(crate) fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Component, LoadError> {
    Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
        name: name.into(),
        message: format!("{e:#}"),
    })
}

/// Links and type-checks a component against the step world.
pub(crate) fn pre_instantiate(
    linker: &Linker<InstanceState>,
    name: &str,
    component: &Component,
) -> Result<StepPre<InstanceState>, LoadError> {
    let wrong_world = |problems| LoadError::WrongWorld {
        name: name.into(),
        problems,
    };
    let engine = linker.engine();
    let ty = component.component_type();
    if ty.get_export(engine, "run").is_none() {
        let mut problems = vec!["it does not export the function `run`".to_owned()];
        if ty.get_export(engine, "wasi:cli/run@0.2.0").is_some()
            || ty
                .exports(engine)
                .any(|(name, _)| name.starts_with("wasi:cli/run@"))
        {
            problems.push("it is a WASI command (it exports `wasi:cli/run`); build the step as a library (crate-type cdylib) with the stepbox-guest SDK".to_owned());
        }
        return Err(wrong_world(problems));
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| wrong_world(vec![format!("{e:#}")]))?;
    StepPre::new(pre).map_err(|e| wrong_world(vec![format!("{e:#}")]))
}

/// Lists a compiled component's imports and exports.
pub(crate) fn describe(engine: &Engine, component: &Component) -> (Vec<Item>, Vec<Item>) {
    let ty = component.component_type();
    let item = |(name, item): (&str, ComponentExtern<'_>)| Item {
        name: name.to_owned(),
        kind: match item.ty {
            ComponentItem::ComponentFunc(_) => "func",
            ComponentItem::CoreFunc(_) => "core func",
            ComponentItem::Module(_) => "module",
            ComponentItem::Component(_) => "component",
            ComponentItem::ComponentInstance(_) => "instance",
            ComponentItem::Type(_) => "type",
            ComponentItem::Resource(_) => "resource",
        },
    };
    (
        ty.imports(engine).map(item).collect(),
        ty.exports(engine).map(item).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_modules_components_and_garbage_apart() {
        assert!(check_preamble("c", b"\0asm\x0d\x00\x01\x00rest").is_ok());
        assert!(matches!(
            check_preamble("m", b"\0asm\x01\x00\x00\x00"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(matches!(
            check_preamble("t", b"hello world"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(check_preamble("e", b""), Err(LoadError::NotWasm { .. })));
        assert!(matches!(
            check_preamble("v", b"\0asm\x02\x00\x00\x00"),
            Err(LoadError::Invalid { .. })
        ));
    }
}
