//! The on-disk cache of precompiled components.
//!
//! Compiling a component takes tens of milliseconds; loading its precompiled
//! form takes a fraction of one. Entries are keyed by the component's content
//! digest and by the engine's compatibility hash (wasmtime version, target and
//! every setting that changes generated code), so a stale entry is never even
//! looked up. Each file carries a checksum of its payload: `deserialize` trusts
//! its input completely, so a truncated or tampered file is discarded and the
//! component recompiled rather than fed to it.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::component::Digest;

const MAGIC: &[u8; 8] = b"STEPBOX1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// Precompiled artifacts in a directory, one file per (component, engine configuration).
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..12]);
        Ok(DiskCache {
            dir: dir.to_owned(),
            engine_key,
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The precompiled component, if a sound entry exists.
    pub(crate) fn get(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        let payload = match verify(&bytes) {
            Some(payload) => payload,
            None => {
                tracing::warn!(path = %path.display(), "discarding a corrupt precompiled component");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: `payload` is exactly what `Component::serialize` of an engine
        // with this compatibility hash wrote into this file (the checksum
        // proves it was not altered since), which is what `deserialize`
        // requires. The cache directory belongs to the host's operator.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "discarding an unusable precompiled component");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component; failures only cost a recompile later.
    pub(crate) fn put(&self, digest: &Digest, component: &Component) {
        if let Err(error) = self.try_put(digest, component) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not cache a precompiled component");
        }
    }

    fn try_put(&self, digest: &Digest, component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize()?;
        let path = self.path(digest);
        // Write then rename, so a reader never sees a half-written file under
        // the final name, even when several hosts share the directory.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(&payload))?;
        file.write_all(&payload)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

fn verify(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (sum, payload) = bytes[MAGIC.len()..].split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Feeds `Hash` output into SHA-256, so the key is stable across Rust
/// versions (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 state is used")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_only_intact_entries() {
        let payload = b"precompiled bytes";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(payload));
        file.extend_from_slice(payload);
        assert_eq!(verify(&file), Some(&payload[..]));

        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&flipped), None);
        assert_eq!(verify(&file[..file.len() - 1]), None);
        assert_eq!(verify(b"STEPBOX1"), None);
        assert_eq!(verify(b""), None);
    }
}
