//! The operator's plugin configuration, in TOML.
//!
//! ```toml
//! cache-dir = "/var/lib/husk/plugins/cache"  # compiled components (default: <config dir>/.cache)
//! state-dir = "/var/lib/husk/plugins/state"  # persisted stores (default: in memory)
//!
//! [defaults]                  # for every plugin that does not say otherwise
//! time-limit-ms = 100
//! memory-limit-mib = 64
//! on-error = "deny"           # or "allow"
//!
//! [[plugin]]
//! name = "no-privileged"      # unique; shown in verdicts
//! path = "policy.wasm"        # relative to this file; `.so` means native
//! kind = "wasm"               # or "native" (default: from the extension)
//! hooks = ["create"]          # of create, start, exit (default: all it exports)
//! mode = "enforce"            # or "audit": would-deny is logged, not enforced
//! order = 10                  # lower runs first; ties keep file order
//! on-error = "deny"
//! time-limit-ms = 50
//! memory-limit-mib = 32
//! grants = []                 # store, clock, random, network, "fs:/host/dir:ro" or ":rw"
//! [plugin.config]             # passed to the plugin (husk:plugin/config)
//! allowed-registries = ["docker.io", "ghcr.io"]   # lists are joined with ","
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::grants::Grants;
use crate::Error;

/// Default time limit of one hook call.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);
/// Default memory cap of one plugin instance.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// The largest memory cap a plugin may be given (the engine's pool slot size).
pub const MAX_MEMORY_LIMIT_MIB: u64 = 1024;

/// What to do when a plugin traps, times out, exceeds its memory or returns
/// an invalid mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: the container is denied.
    #[default]
    Deny,
    /// Fail open: the plugin is skipped.
    Allow,
}

/// Whether a plugin's denials are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Would-deny (and would-mutate) is logged and reported, not enforced.
    Audit,
}

/// Where a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A WebAssembly component, sandboxed.
    Wasm,
    /// A native shared library, trusted and unsandboxed.
    Native,
}

/// A lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    Create,
    Start,
    Exit,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Create => "create",
            Hook::Start => "start",
            Hook::Exit => "exit",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawDefaults {
    time_limit_ms: Option<u64>,
    memory_limit_mib: Option<u64>,
    on_error: Option<OnError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawPlugin {
    name: String,
    path: PathBuf,
    kind: Option<Kind>,
    hooks: Option<Vec<Hook>>,
    #[serde(default)]
    mode: Mode,
    order: Option<i64>,
    on_error: Option<OnError>,
    time_limit_ms: Option<u64>,
    memory_limit_mib: Option<u64>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    cache_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    plugin: Vec<RawPlugin>,
}

/// One plugin, with defaults filled in and paths made absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// `None`: every hook the plugin exports.
    pub hooks: Option<Vec<Hook>>,
    pub mode: Mode,
    pub order: i64,
    pub on_error: OnError,
    pub time_limit: Duration,
    pub memory_limit_mib: u64,
    pub grants: Grants,
    /// The plugin's config map, values flattened to strings.
    pub config: BTreeMap<String, String>,
}

impl PluginConfig {
    /// A plugin with every default: enforce, deny on error, 100 ms, 64 MiB,
    /// no grants, no config. Convenient for tests and `husk plugin test`.
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let kind = kind_from_path(&path);
        PluginConfig {
            name: name.to_owned(),
            path,
            kind,
            hooks: None,
            mode: Mode::Enforce,
            order: 0,
            on_error: OnError::Deny,
            time_limit: DEFAULT_TIME_LIMIT,
            memory_limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            grants: Grants::default(),
            config: BTreeMap::new(),
        }
    }

    /// Whether the config restricts the plugin to hooks not including `hook`.
    pub fn wants(&self, hook: Hook) -> bool {
        self.hooks.as_ref().is_none_or(|h| h.contains(&hook))
    }
}

fn kind_from_path(path: &Path) -> Kind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("so") | Some("dylib") => Kind::Native,
        _ => Kind::Wasm,
    }
}

/// The whole plugin configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostConfig {
    /// The file it was read from, if any (watched for hot reload).
    pub source: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub state_dir: Option<PathBuf>,
    /// In the order hooks run (by `order`, then file order).
    pub plugins: Vec<PluginConfig>,
}

impl HostConfig {
    /// A config with these plugins, caching compiled components in `cache_dir`.
    pub fn with_plugins(cache_dir: impl Into<PathBuf>, plugins: Vec<PluginConfig>) -> Self {
        let mut plugins = plugins;
        plugins.sort_by_key(|p| p.order);
        HostConfig {
            source: None,
            cache_dir: cache_dir.into(),
            state_dir: None,
            plugins,
        }
    }

    /// Reads and checks a TOML config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; relative paths are taken relative to `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let invalid = |message: String| Error::ConfigInvalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let default_time = raw
            .defaults
            .time_limit_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TIME_LIMIT);
        let default_mem = raw
            .defaults
            .memory_limit_mib
            .unwrap_or(DEFAULT_MEMORY_LIMIT_MIB);
        let default_on_error = raw.defaults.on_error.unwrap_or_default();

        let mut plugins = Vec::new();
        let mut names = std::collections::HashSet::new();
        for p in raw.plugin {
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(format!(
                    "plugin name {:?} must be non-empty letters, digits, - _ .",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(format!(
                    "plugin name {:?} is used twice; names must be unique",
                    p.name
                )));
            }
            let time_limit = p
                .time_limit_ms
                .map(Duration::from_millis)
                .unwrap_or(default_time);
            if time_limit.is_zero() || time_limit > Duration::from_secs(60) {
                return Err(invalid(format!(
                    "plugin {}: time-limit-ms must be between 1 and 60000",
                    p.name
                )));
            }
            let memory_limit_mib = p.memory_limit_mib.unwrap_or(default_mem);
            if memory_limit_mib == 0 || memory_limit_mib > MAX_MEMORY_LIMIT_MIB {
                return Err(invalid(format!(
                    "plugin {}: memory-limit-mib must be between 1 and {MAX_MEMORY_LIMIT_MIB}",
                    p.name
                )));
            }
            let grants = Grants::parse(&p.name, &p.grants).map_err(|e| invalid(e.to_string()))?;
            let mut config = BTreeMap::new();
            for (k, v) in p.config {
                let v = flatten_value(&v).ok_or_else(|| {
                    invalid(format!(
                        "plugin {}: config.{k} must be a string, number, boolean or a list of those",
                        p.name
                    ))
                })?;
                config.insert(k, v);
            }
            let path = abs(&p.path);
            plugins.push(PluginConfig {
                kind: p.kind.unwrap_or_else(|| kind_from_path(&path)),
                name: p.name,
                path,
                hooks: p.hooks,
                mode: p.mode,
                order: p.order.unwrap_or(0),
                on_error: p.on_error.unwrap_or(default_on_error),
                time_limit,
                memory_limit_mib,
                grants,
                config,
            });
        }
        // A stable sort: equal `order`s keep the file's order.
        plugins.sort_by_key(|p| p.order);
        Ok(HostConfig {
            source: Some(path.to_owned()),
            cache_dir: raw
                .cache_dir
                .map(|p| abs(&p))
                .unwrap_or_else(|| base.join(".cache")),
            state_dir: raw.state_dir.map(|p| abs(&p)),
            plugins,
        })
    }
}

fn flatten_value(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::Array(_) | toml::Value::Table(_) => None,
                other => flatten_value(other),
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_order_and_config() {
        let cfg = HostConfig::parse(
            r#"
            [defaults]
            time-limit-ms = 20
            on-error = "allow"
            [[plugin]]
            name = "b"
            path = "b.wasm"
            order = 5
            [[plugin]]
            name = "a"
            path = "/abs/a.so"
            mode = "audit"
            grants = ["store", "fs:/tmp:ro"]
            [plugin.config]
            regs = ["docker.io", "ghcr.io"]
            n = 3
            "#,
            Path::new("/etc/husk/plugins.toml"),
        )
        .unwrap();
        assert_eq!(cfg.plugins[0].name, "a");
        assert_eq!(cfg.plugins[0].kind, Kind::Native);
        assert_eq!(cfg.plugins[0].mode, Mode::Audit);
        assert_eq!(cfg.plugins[0].config["regs"], "docker.io,ghcr.io");
        assert_eq!(cfg.plugins[0].config["n"], "3");
        assert!(cfg.plugins[0].grants.store);
        assert_eq!(cfg.plugins[1].path, Path::new("/etc/husk/b.wasm"));
        assert_eq!(cfg.plugins[1].time_limit, Duration::from_millis(20));
        assert_eq!(cfg.plugins[1].on_error, OnError::Allow);
        assert_eq!(cfg.cache_dir, Path::new("/etc/husk/.cache"));
    }

    #[test]
    fn refuses_unknown_keys_and_grants() {
        let e = HostConfig::parse(
            "[[plugin]]\nname='a'\npath='a.wasm'\ntimeout=3\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        let e = HostConfig::parse(
            "[[plugin]]\nname='a'\npath='a.wasm'\ngrants=['root']\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
    }
}
