//! Errors. Each says what went wrong with which plugin, and what to do.

use std::path::PathBuf;
use std::time::Duration;

/// Loading or configuring plugins failed. Hooks never return this: a hook's
/// failure is a [`HookFailure`], handled by the plugin's on-error policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin config {path}: cannot read it: {source}; check the path (the shim reads it from its runtime options or /etc/husk/plugins.toml)")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("plugin config {path}: {message}; see docs/plugin-guide.md#configuration")]
    ConfigInvalid { path: PathBuf, message: String },

    #[error("plugin {plugin}: file {path} not found; fix `path` in the plugin config or install the plugin")]
    PluginMissing { plugin: String, path: PathBuf },

    #[error("plugin {plugin}: cannot read {path}: {source}")]
    PluginRead {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("plugin {plugin}: {path} is not a WebAssembly file (no \\0asm header); a wasm plugin must be a component built against wit/ (see docs/plugin-guide.md), a native one needs `kind = \"native\"`")]
    NotWasm { plugin: String, path: PathBuf },

    #[error("plugin {plugin}: {path} is a core WebAssembly module, not a component; wrap it with `wasm-tools component new` (after `wasm-tools component embed wit --world policy`)")]
    CoreModule { plugin: String, path: PathBuf },

    #[error("plugin {plugin}: the component exports none of {expected}; it was built for another world: build it for world `policy`, `lifecycle` or `plugin` of husk's wit/ (it exports: {found})")]
    WrongWorld {
        plugin: String,
        expected: String,
        found: String,
    },

    #[error("plugin {plugin}: built against {found}, but this host speaks husk:plugin@{host}; rebuild the plugin against the wit/ of this husk")]
    IncompatibleVersion {
        plugin: String,
        found: String,
        host: &'static str,
    },

    #[error("plugin {plugin}: it imports {import} but its config does not grant `{grant}`; add `grants = [\"{grant}\"]` to its [[plugin]] table if you trust it with that")]
    NotGranted {
        plugin: String,
        import: String,
        grant: &'static str,
    },

    #[error("plugin {plugin}: its hooks do not match husk:plugin@0.1.0 (was it built from a modified wit/?): {detail}")]
    TypeMismatch { plugin: String, detail: String },

    #[error("plugin {plugin}: config asks for hook `{hook}` but the plugin does not export it (it exports: {exports})")]
    HookNotExported {
        plugin: String,
        hook: &'static str,
        exports: String,
    },

    #[error("plugin {plugin}: the component cannot be compiled: {detail}")]
    Compile { plugin: String, detail: String },

    #[error("plugin {plugin}: the component cannot be linked: {detail}")]
    Link { plugin: String, detail: String },

    #[error("plugin {plugin}: a test instantiation failed: {detail}")]
    Instantiate { plugin: String, detail: String },

    #[error("plugin cache {path}: {source}; the cache directory must be writable by the host (set `cache-dir` in the plugin config)")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("plugin {plugin}: native library {path}: {detail}")]
    Native {
        plugin: String,
        path: PathBuf,
        detail: String,
    },

    #[error("the wasmtime engine cannot be configured: {0}")]
    Engine(String),

    #[error("plugin {plugin}: grant {grant:?}: {detail}")]
    Grant {
        plugin: String,
        grant: String,
        detail: String,
    },
}

/// Why one plugin's hook failed. The plugin's on-error policy turns it into
/// allow or deny at create; at start and exit it is logged and reported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HookFailure {
    #[error("timed out after {0:?} (its time limit); raise `time-limit-ms` or fix the plugin")]
    Timeout(Duration),
    #[error(
        "exceeded its memory cap of {cap_mib} MiB; raise `memory-limit-mib` or fix the plugin"
    )]
    MemoryCap { cap_mib: u64 },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an invalid mutation: {0}")]
    InvalidMutation(String),
    #[error("native plugin failed: {0}")]
    Native(String),
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
}
