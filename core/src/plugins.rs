//! huskd's installed plugins (`husk plugin install/ls/rm/test`).
//!
//! Plugins run in the shims, not in huskd: huskd keeps the operator's set
//! under `<root>/plugins` (the plugin files, `index.json`, and the
//! `plugins.toml` generated from it, which every shim it starts is given in
//! the task's runtime options) and leaves checking and trying plugins to the
//! `husk-plugin` tool, so that huskd links neither wasmtime nor the runtime
//! library. A change takes effect for the next container: shims read the
//! config when they create one, so there is nothing to restart.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::state;

/// The tool huskd runs to check and try plugins.
pub const PLUGIN_TOOL: &str = "husk-plugin";

/// `plugin.install` parameters (what `husk plugin install` sends).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallParams {
    /// The plugin file on huskd's host: a component (`.wasm`) or a native
    /// library (`.so`).
    pub path: String,
    /// Defaults to the file name without its extension.
    pub name: Option<String>,
    /// `enforce` (default) or `audit`.
    pub mode: Option<String>,
    /// `deny` (default) or `allow`.
    pub on_error: Option<String>,
    pub time_limit_ms: Option<u64>,
    pub memory_limit_mib: Option<u64>,
    /// `store`, `clock`, `random`, `fs:HOST_DIR`...: see docs/plugin-guide.md.
    pub grants: Vec<String>,
    /// The plugin's config map.
    pub config: BTreeMap<String, String>,
    /// Hooks run in ascending order; ties in install order.
    pub order: Option<i64>,
}

/// One installed plugin, as `husk plugin ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InstalledPlugin {
    pub name: String,
    /// The copy huskd keeps (`<root>/plugins/<name>.<ext>`).
    pub file: PathBuf,
    pub sha256: String,
    pub kind: String,
    pub hooks: Vec<String>,
    pub mode: String,
    pub on_error: String,
    pub time_limit_ms: Option<u64>,
    pub memory_limit_mib: Option<u64>,
    pub grants: Vec<String>,
    pub config: BTreeMap<String, String>,
    pub order: i64,
    pub installed_at: u64,
}

/// The installed set.
pub struct PluginStore {
    dir: PathBuf,
    /// A config the operator maintains by hand (`huskd --plugin-config`):
    /// used as is; install and rm refuse to touch it.
    external: Option<PathBuf>,
    /// One change at a time.
    lock: Mutex<()>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> CoreError {
    move |e| CoreError::io(what, e)
}

impl PluginStore {
    pub fn new(dir: PathBuf, external: Option<PathBuf>) -> PluginStore {
        PluginStore {
            dir,
            external,
            lock: Mutex::new(()),
        }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn managed_config(&self) -> PathBuf {
        self.dir.join("plugins.toml")
    }

    /// The config shims are given; `None` when no plugin is installed.
    pub fn config_for_shims(&self) -> Option<PathBuf> {
        if let Some(p) = &self.external {
            return Some(p.clone());
        }
        let config = self.managed_config();
        (config.exists() && !self.list().unwrap_or_default().is_empty()).then_some(config)
    }

    pub fn list(&self) -> Result<Vec<InstalledPlugin>> {
        if self.external.is_some() {
            return Err(self.external_err());
        }
        match fs::read(self.index_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::Internal(format!(
                    "{} is corrupt ({e}); remove it and install the plugins again",
                    self.index_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(CoreError::io(
                format!("reading {}", self.index_path().display()),
                e,
            )),
        }
    }

    fn external_err(&self) -> CoreError {
        CoreError::InvalidArgument(format!(
            "huskd uses the plugin config {} (--plugin-config): edit that file instead",
            self.external.as_deref().unwrap_or(Path::new("?")).display()
        ))
    }

    /// Validates, precompiles and installs a plugin (replacing one of the
    /// same name). Nothing changes when any check fails.
    pub fn install(&self, p: &InstallParams) -> Result<InstalledPlugin> {
        if self.external.is_some() {
            return Err(self.external_err());
        }
        let source = PathBuf::from(&p.path);
        if !source.is_absolute() {
            return Err(CoreError::InvalidArgument(format!(
                "plugin path {:?} must be absolute (huskd reads it)",
                p.path
            )));
        }
        let bytes = fs::read(&source).map_err(|e| {
            CoreError::InvalidArgument(format!("cannot read the plugin {}: {e}", source.display()))
        })?;
        let ext = match source.extension().and_then(|e| e.to_str()) {
            Some("so") => "so",
            _ => "wasm",
        };
        let name = match &p.name {
            Some(n) => n.clone(),
            None => source
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        state::check_name("plugin", &name)?;
        for (what, value, allowed) in [
            ("mode", &p.mode, ["enforce", "audit"]),
            ("on-error", &p.on_error, ["deny", "allow"]),
        ] {
            if let Some(v) = value {
                if !allowed.contains(&v.as_str()) {
                    return Err(CoreError::InvalidArgument(format!(
                        "invalid {what} {v:?}: use {} or {}",
                        allowed[0], allowed[1]
                    )));
                }
            }
        }
        let _guard = self.lock.lock().unwrap();
        fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("creating {}", self.dir.display())))?;
        let mut plugins = self.list()?;
        let order = p.order.unwrap_or_else(|| {
            plugins
                .iter()
                .filter(|q| q.name != name)
                .map(|q| q.order + 10)
                .max()
                .unwrap_or(10)
        });
        let candidate = InstalledPlugin {
            name: name.clone(),
            file: self.dir.join(format!("{name}.{ext}")),
            sha256: crate::images::digest::Digest::of(&bytes).hex().to_owned(),
            kind: if ext == "so" { "native" } else { "wasm" }.into(),
            hooks: Vec::new(),
            mode: p.mode.clone().unwrap_or_else(|| "enforce".into()),
            on_error: p.on_error.clone().unwrap_or_else(|| "deny".into()),
            time_limit_ms: p.time_limit_ms,
            memory_limit_mib: p.memory_limit_mib,
            grants: p.grants.clone(),
            config: p.config.clone(),
            order,
            installed_at: state::now(),
        };
        // Checked in a staging dir: the new file and a config naming it
        // beside the others.
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)
            .map_err(io_err(format!(
                "creating a staging dir in {}",
                self.dir.display()
            )))?;
        let staged_file = staging.path().join(format!("{name}.{ext}"));
        fs::write(&staged_file, &bytes)
            .map_err(io_err(format!("writing {}", staged_file.display())))?;
        plugins.retain(|q| q.name != name);
        let mut staged_set = plugins.clone();
        staged_set.push(InstalledPlugin {
            file: staged_file.clone(),
            ..candidate.clone()
        });
        let staged_config = staging.path().join("plugins.toml");
        self.write_config(&staged_config, &staged_set)?;
        let checked = run_tool(
            &["check", "--config", &staged_config.to_string_lossy()],
            None,
        )?;
        let hooks = checked["plugins"]
            .as_array()
            .and_then(|a| a.iter().find(|q| q["name"] == name.as_str()))
            .and_then(|q| q["hooks"].as_array())
            .map(|h| {
                h.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let installed = InstalledPlugin { hooks, ..candidate };
        fs::rename(&staged_file, &installed.file)
            .map_err(io_err(format!("installing {}", installed.file.display())))?;
        plugins.push(installed.clone());
        plugins.sort_by_key(|q| q.order);
        self.commit(&plugins)?;
        tracing::info!(plugin = name, sha256 = installed.sha256, "plugin installed");
        Ok(installed)
    }

    pub fn remove(&self, name: &str) -> Result<InstalledPlugin> {
        if self.external.is_some() {
            return Err(self.external_err());
        }
        let _guard = self.lock.lock().unwrap();
        let mut plugins = self.list()?;
        let Some(pos) = plugins.iter().position(|q| q.name == name) else {
            return Err(CoreError::NotFound(format!(
                "no plugin {name:?} is installed (see `husk plugin ls`)"
            )));
        };
        let removed = plugins.remove(pos);
        self.commit(&plugins)?;
        let _ = fs::remove_file(&removed.file);
        tracing::info!(plugin = name, "plugin removed");
        Ok(removed)
    }

    /// One plugin's verdict on `spec` (`husk plugin test`): runs nothing.
    pub fn test(&self, name: &str, spec: &Value, image: &str) -> Result<Value> {
        let config = self.config_for_shims().ok_or_else(|| {
            CoreError::NotFound("no plugin is installed (see `husk plugin install`)".into())
        })?;
        let spec_text = serde_json::to_string(spec).expect("a spec serializes");
        run_tool(
            &[
                "test",
                "--config",
                &config.to_string_lossy(),
                "--plugin",
                name,
                "--spec",
                "-",
                "--image",
                image,
            ],
            Some(spec_text.as_bytes()),
        )
    }

    /// Writes the index and the config generated from it.
    fn commit(&self, plugins: &[InstalledPlugin]) -> Result<()> {
        self.write_config(&self.managed_config(), plugins)?;
        state::write_atomic(
            &self.index_path(),
            &serde_json::to_vec_pretty(plugins).expect("the index serializes"),
        )
    }

    fn write_config(&self, path: &Path, plugins: &[InstalledPlugin]) -> Result<()> {
        let mut t = String::from(
            "# Generated by huskd from index.json: change it with `husk plugin install/rm`.\n",
        );
        let q = |s: &str| toml_string(s);
        t += &format!(
            "cache-dir = {}\n",
            q(&self.dir.join("cache").to_string_lossy())
        );
        t += &format!(
            "state-dir = {}\n",
            q(&self.dir.join("state").to_string_lossy())
        );
        for p in plugins {
            t += &format!(
                "\n[[plugin]]\nname = {}\npath = {}\nmode = {}\non-error = {}\norder = {}\n",
                q(&p.name),
                q(&p.file.to_string_lossy()),
                q(&p.mode),
                q(&p.on_error),
                p.order
            );
            if let Some(ms) = p.time_limit_ms {
                t += &format!("time-limit-ms = {ms}\n");
            }
            if let Some(mib) = p.memory_limit_mib {
                t += &format!("memory-limit-mib = {mib}\n");
            }
            if !p.grants.is_empty() {
                let list: Vec<String> = p.grants.iter().map(|g| q(g)).collect();
                t += &format!("grants = [{}]\n", list.join(", "));
            }
            if !p.config.is_empty() {
                t += "[plugin.config]\n";
                for (k, v) in &p.config {
                    t += &format!("{} = {}\n", q(k), q(v));
                }
            }
        }
        state::write_atomic(path, t.as_bytes())
    }
}

/// A TOML basic string (JSON's escaping is valid TOML for these).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Runs `husk-plugin ARGS` and parses its JSON output.
fn run_tool(args: &[&str], stdin: Option<&[u8]>) -> Result<Value> {
    let tool = crate::shim_client::find_binary(PLUGIN_TOOL).ok_or_else(|| {
        CoreError::Runtime(format!(
            "{PLUGIN_TOOL} is missing: it is not beside huskd nor on PATH; \
             build it (`cargo build --release -p husk-plugins`) and put it beside huskd"
        ))
    })?;
    let mut child = Command::new(&tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running {}", tool.display())))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .map_err(io_err(format!("writing to {}", tool.display())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("running {}", tool.display())))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().trim_start_matches("husk-plugin: ");
        return Err(CoreError::InvalidArgument(msg.to_string()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        CoreError::Internal(format!(
            "{} printed something that is not JSON: {e}",
            tool.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_parses_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::new(dir.path().to_owned(), None);
        let p = InstalledPlugin {
            name: "sec".into(),
            file: dir.path().join("sec.wasm"),
            sha256: "x".into(),
            kind: "wasm".into(),
            hooks: vec![],
            mode: "audit".into(),
            on_error: "allow".into(),
            time_limit_ms: Some(50),
            memory_limit_mib: None,
            grants: vec!["store".into()],
            config: [("allowed-registries".to_string(), "a \"b\"\n".to_string())].into(),
            order: 10,
            installed_at: 0,
        };
        let path = dir.path().join("plugins.toml");
        store.write_config(&path, &[p]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""allowed-registries" = "a \"b\"\n""#),
            "{text}"
        );
        assert!(text.contains("mode = \"audit\""), "{text}");
        assert!(text.contains("grants = [\"store\"]"), "{text}");
    }

    #[test]
    fn install_refuses_relative_paths_bad_modes_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::new(dir.path().to_owned(), None);
        let mut p = InstallParams {
            path: "rel.wasm".into(),
            ..Default::default()
        };
        assert!(store
            .install(&p)
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        let f = dir.path().join("x.wasm");
        fs::write(&f, b"x").unwrap();
        p.path = f.to_string_lossy().into_owned();
        p.mode = Some("loud".into());
        assert!(store
            .install(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid mode"));
        p.mode = None;
        p.name = Some("../x".into());
        assert!(store.install(&p).is_err());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn external_configs_are_not_managed() {
        let store = PluginStore::new("/nonexistent".into(), Some("/etc/husk/p.toml".into()));
        assert_eq!(
            store.config_for_shims(),
            Some(PathBuf::from("/etc/husk/p.toml"))
        );
        assert!(store
            .list()
            .unwrap_err()
            .to_string()
            .contains("--plugin-config"));
        assert!(store.remove("x").is_err());
    }
}
