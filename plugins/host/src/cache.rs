//! Ahead-of-time compilation, cached on disk.
//!
//! A component is compiled once, when a plugin is loaded (or installed), and
//! the machine code is kept in `<cache-dir>/<sha256 of the .wasm>-<engine
//! key>.cwasm`. The engine key hashes wasmtime's
//! `Engine::precompile_compatibility_hash` (its version, target and every
//! setting that changes code), so a new wasmtime or engine setting misses the
//! cache instead of loading incompatible code. Hooks never compile: they
//! instantiate what was loaded here.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::kv::write_atomically;
use crate::Error;

/// Feeds `Hash` into SHA-256, so the key is stable across Rust versions
/// (unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only finalize() is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The on-disk cache of compiled components for one engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: &Path) -> Self {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir: dir.to_owned(),
            engine_key: hex(&h.0.finalize()[..12]),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache file for a component's bytes.
    pub fn path_for(&self, wasm: &[u8]) -> PathBuf {
        let digest = hex(&Sha256::digest(wasm));
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled form of `wasm`, compiling and caching it first if
    /// needed.
    pub fn load(
        &self,
        engine: &Engine,
        plugin: &str,
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), Error> {
        let path = self.path_for(wasm);
        if path.exists() {
            // SAFETY: `deserialize_file` runs the file's machine code as
            // trusted. The file is one this cache wrote with
            // `precompile_component` for an engine with the same
            // compatibility hash, in a directory created 0700 for the host's
            // user; its name binds it to the .wasm's content hash. A file
            // wasmtime rejects (truncated, other version) is recompiled.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(
                    plugin, path = %path.display(), error = %e,
                    "cached plugin code is unusable; recompiling"
                ),
            }
        }
        let started = Instant::now();
        let code = engine
            .precompile_component(wasm)
            .map_err(|e| Error::Compile {
                plugin: plugin.to_owned(),
                detail: format!("{e:#}"),
            })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| Error::Cache {
                path: self.dir.clone(),
                source,
            })?;
        write_atomically(&path, &code).map_err(|source| Error::Cache {
            path: path.clone(),
            source,
        })?;
        tracing::info!(plugin, elapsed = ?started.elapsed(), path = %path.display(), "compiled plugin");
        // SAFETY: as above; the file was just written from
        // `precompile_component` on this engine.
        let c =
            unsafe { Component::deserialize_file(engine, &path) }.map_err(|e| Error::Compile {
                plugin: plugin.to_owned(),
                detail: format!("cannot load the freshly compiled code: {e:#}"),
            })?;
        Ok((c, CacheOutcome::Compiled))
    }
}
