//! Plugin hooks in the shim: the operator's policy and lifecycle plugins
//! (`husk-plugins`) run at create (before anything exists), start and exit.
//!
//! Which config applies to a container: the path in the task's runtime
//! options (`runtimeoptions.v1.Options.config_path`, which containerd's CRI
//! `options = { ConfigPath = ... }`, `ctr run --runtime-config-path` and
//! huskd all send), else `$HUSK_PLUGIN_CONFIG`, else
//! `/etc/husk/plugins.toml` when it exists. No config: no plugins, and
//! wasmtime is never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_plugins::{
    mutation, ContainerContext, ExitEvent, ExitStatus, KeyValue, Outcome, PluginHost, StartEvent,
    Timestamp,
};
use oci_spec::runtime::Spec;
use protobuf::well_known_types::any::Any;
use serde::Serialize;

use crate::error::{Result, ShimError};
use crate::state::ExitRecord;
use crate::Profile;

pub const DEFAULT_CONFIG: &str = "/etc/husk/plugins.toml";
pub const CONFIG_ENV: &str = "HUSK_PLUGIN_CONFIG";
/// A config the shim daemon loads in the background as it starts, so the
/// first Create finds the plugins ready (huskd sets it; `start` sets it
/// from the runtime options containerd writes on its stdin).
pub const PRELOAD_ENV: &str = "HUSK_PLUGIN_PRELOAD";
/// containerd's generic runtime options (`runtimeoptions.v1.Options`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// Written into the bundle when plugins edited the spec or an audit-mode
/// plugin would have denied it, for huskd (`husk inspect`) and operators.
pub const DECISION_FILE: &str = "husk-policy.json";

/// The plugin config for a task created with `options`.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>> {
    if let Some(path) = options
        .map(runtime_options_config_path)
        .transpose()?
        .flatten()
    {
        if !path.exists() {
            return Err(ShimError::InvalidArgument(format!(
                "the runtime options name the plugin config {}, which does not exist; \
                 create it (see docs/plugin-guide.md) or remove ConfigPath from the runtime options",
                path.display()
            )));
        }
        return Ok(Some(path));
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(path)));
    }
    let default = Path::new(DEFAULT_CONFIG);
    Ok(default.exists().then(|| default.to_owned()))
}

/// `config_path` (field 2) of a `runtimeoptions.v1.Options`; `None` for
/// other option types (runc's, which carry no plugin config).
fn runtime_options_config_path(any: &Any) -> Result<Option<PathBuf>> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    let bad = |e: protobuf::Error| {
        ShimError::InvalidArgument(format!(
            "the task's {RUNTIME_OPTIONS_TYPE} do not decode: {e}"
        ))
    };
    let mut input = protobuf::CodedInputStream::from_bytes(&any.value);
    let mut config_path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3) | 2 {
            config_path = Some(input.read_string().map_err(bad)?);
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut input).map_err(bad)?;
        }
    }
    Ok(config_path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The plugin config named in the runtime options containerd 1.6 writes
/// on `start`'s stdin (a protobuf `Any`); `None` for anything else.
pub fn config_in_start_options(bytes: &[u8]) -> Option<PathBuf> {
    use protobuf::Message;
    let any = Any::parse_from_bytes(bytes).ok()?;
    runtime_options_config_path(&any).ok().flatten()
}

/// Starts loading the config named by `$HUSK_PLUGIN_PRELOAD`, if any: the
/// engine and the compiled plugins are ready before Create asks for them
/// (a Create that comes first waits for the load rather than repeating it).
pub fn preload(plugins: &Arc<Plugins>) {
    let Some(config) = std::env::var_os(PRELOAD_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    let config = PathBuf::from(config);
    let plugins = plugins.clone();
    let spawned = std::thread::Builder::new()
        .name("husk-plugin-preload".into())
        .spawn(move || {
            if let Err(e) = plugins.host(&config) {
                tracing::warn!(%e, "preloading plugins");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(%e, "cannot start a thread to preload plugins");
    }
}

/// The plugin hosts this shim loaded, by config file. A shim serving a pod
/// creates many containers: the host is loaded once and reloaded when its
/// config file changes.
#[derive(Default)]
pub struct Plugins {
    loaded: Mutex<HashMap<PathBuf, Loaded>>,
    /// Lifecycle hooks still running; Shutdown waits for them.
    hooks_running: Mutex<usize>,
    hook_done: Condvar,
}

struct Loaded {
    host: Arc<PluginHost>,
    modified: Option<SystemTime>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Plugins {
    /// The host for `config`, loading or reloading it as needed.
    pub fn host(&self, config: &Path) -> Result<Arc<PluginHost>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = modified(config);
        if let Some(l) = loaded.get_mut(config) {
            if l.modified != now {
                // Keeps the old plugins when the new config is broken.
                l.host.reload().map_err(|e| plugin_error(config, e))?;
                l.modified = now;
                tracing::info!(config = %config.display(), "plugin config changed: reloaded");
            }
            return Ok(l.host.clone());
        }
        let host =
            Arc::new(PluginHost::from_config_file(config).map_err(|e| plugin_error(config, e))?);
        loaded.insert(
            config.to_owned(),
            Loaded {
                host: host.clone(),
                modified: now,
            },
        );
        Ok(host)
    }
}

impl Plugins {
    /// Waits (at most `max`) for running lifecycle hooks, so that the
    /// shim does not exit under an exit hook.
    pub fn wait_for_hooks(&self, max: Duration) {
        let running = self.hooks_running.lock().unwrap_or_else(|p| p.into_inner());
        let (running, timeout) = self
            .hook_done
            .wait_timeout_while(running, max, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!(
                running = *running,
                "exiting with lifecycle hooks still running"
            );
        }
    }

    fn hook_finished(&self) {
        let mut running = self.hooks_running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        self.hook_done.notify_all();
    }
}

fn plugin_error(config: &Path, e: husk_plugins::Error) -> ShimError {
    ShimError::InvalidArgument(format!("plugin config {}: {e}", config.display()))
}

/// What was decided about a container, kept in its bundle.
#[derive(Debug, Default, Serialize)]
struct DecisionRecord {
    edits: Vec<PluginNote>,
    audit_denials: Vec<PluginNote>,
}

#[derive(Debug, Serialize)]
struct PluginNote {
    plugin: String,
    note: String,
}

/// The runtime name plugins see for this shim binary.
fn runtime_name(profile: Profile) -> &'static str {
    match profile {
        Profile::Native => "io.containerd.husk.v2",
        Profile::Hardened => "io.containerd.husk-hardened.v2",
    }
}

/// Runs the create hooks on `spec`: a denial is an error naming the plugin
/// and its reason; edits are applied to `spec` (already validated again by
/// the host).
pub fn on_create(
    host: &PluginHost,
    id: &str,
    spec: &mut Spec,
    profile: Profile,
    bundle: &Path,
) -> Result<()> {
    let ctx = ContainerContext {
        runtime: runtime_name(profile).into(),
        hardened: profile == Profile::Hardened,
        ..Default::default()
    };
    let decision = host.on_create_spec(id, spec, &ctx);
    for r in &decision.reports {
        match &r.outcome {
            Outcome::Failed { .. } => {
                tracing::warn!(container = id, plugin = r.plugin, outcome = ?r.outcome, "plugin failed")
            }
            _ => {
                tracing::debug!(container = id, plugin = r.plugin, us = r.elapsed.as_micros() as u64, outcome = ?r.outcome, "create hook")
            }
        }
    }
    if let Some(denial) = decision.denial() {
        tracing::warn!(
            container = id,
            plugin = denial.plugin,
            reason = denial.reason,
            "denied by policy"
        );
        return Err(ShimError::Denied(denial.to_string()));
    }
    let record = DecisionRecord {
        edits: decision
            .edits
            .iter()
            .map(|(plugin, edit)| PluginNote {
                plugin: plugin.clone(),
                note: mutation::describe(edit),
            })
            .collect(),
        audit_denials: decision
            .audit_denials()
            .into_iter()
            .map(|(plugin, reason)| {
                tracing::warn!(container = id, plugin, reason, "audit: would deny");
                PluginNote {
                    plugin: plugin.into(),
                    note: reason.into(),
                }
            })
            .collect(),
    };
    if !record.edits.is_empty() || !record.audit_denials.is_empty() {
        let path = bundle.join(DECISION_FILE);
        let json = serde_json::to_vec_pretty(&record).expect("the record serializes");
        std::fs::write(&path, json)
            .map_err(ShimError::io(format!("writing {}", path.display())))?;
    }
    if let Some(edited) = decision.spec {
        *spec = edited;
    }
    Ok(())
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

fn annotations(spec: &Spec) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = spec
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// What the lifecycle hooks need to know about a container, kept with it.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct Binding {
    pub config: PathBuf,
    pub annotations: Vec<(String, String)>,
    /// When Start returned; `None` before.
    pub started_at: Option<SystemTime>,
}

impl Binding {
    pub fn new(config: PathBuf, spec: &Spec) -> Binding {
        Binding {
            config,
            annotations: annotations(spec)
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            started_at: None,
        }
    }

    fn annotations(&self) -> Vec<KeyValue> {
        self.annotations
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    pub fn start_event(&self, id: &str, pid: i32) -> StartEvent {
        StartEvent {
            id: id.into(),
            pid: pid as u32,
            started_at: timestamp(self.started_at.unwrap_or_else(SystemTime::now)),
            annotations: self.annotations(),
        }
    }

    pub fn exit_event(&self, id: &str, pid: i32, exit: &ExitRecord, oom_killed: bool) -> ExitEvent {
        let exited_at =
            UNIX_EPOCH + Duration::new(exit.at_secs.max(0) as u64, exit.at_nanos.max(0) as u32);
        let started_at = self.started_at.unwrap_or(exited_at);
        ExitEvent {
            id: id.into(),
            pid: pid as u32,
            status: exit_status(exit.status),
            oom_killed,
            started_at: timestamp(started_at),
            exited_at: timestamp(exited_at),
            duration_ms: exited_at
                .duration_since(started_at)
                .unwrap_or_default()
                .as_millis() as u64,
            annotations: self.annotations(),
        }
    }
}

/// containerd's exit status (code, or 128 + signal) as the WIT variant.
fn exit_status(status: u32) -> ExitStatus {
    match status {
        129..=192 => ExitStatus::Signal(status - 128),
        code => ExitStatus::Code(code as i32),
    }
}

/// Runs a lifecycle hook off the caller's thread: a slow plugin (bounded
/// by its time limit) never holds up the task it observes.
pub fn notify(
    plugins: &Arc<Plugins>,
    config: PathBuf,
    call: impl FnOnce(&PluginHost) + Send + 'static,
) {
    *plugins
        .hooks_running
        .lock()
        .unwrap_or_else(|p| p.into_inner()) += 1;
    let running = plugins.clone();
    let spawned = std::thread::Builder::new()
        .name("husk-plugin-hook".into())
        .spawn(move || {
            match running.host(&config) {
                Ok(host) => call(&host),
                Err(e) => tracing::warn!(%e, "lifecycle hook skipped"),
            }
            running.hook_finished();
        });
    if let Err(e) = spawned {
        plugins.hook_finished();
        tracing::warn!(%e, "cannot start a thread for a lifecycle hook");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What huskd (`shim_client::plugin_options`) and containerd send.
    fn runtime_options(config_path: &Path) -> Any {
        let mut value = Vec::new();
        {
            let mut out = protobuf::CodedOutputStream::vec(&mut value);
            out.write_string(2, &config_path.to_string_lossy()).unwrap();
            out.flush().unwrap();
        }
        Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn runtime_options_round_trip() {
        let any = runtime_options(Path::new("/etc/husk/p.toml"));
        assert_eq!(
            runtime_options_config_path(&any).unwrap(),
            Some(PathBuf::from("/etc/husk/p.toml"))
        );
    }

    #[test]
    fn runtime_options_with_a_url_prefix_and_other_fields() {
        let mut value = Vec::new();
        {
            let mut out = protobuf::CodedOutputStream::vec(&mut value);
            out.write_string(1, "io.containerd.husk.v2").unwrap();
            out.write_string(2, "/p.toml").unwrap();
            out.write_bytes(3, b"body").unwrap();
            out.flush().unwrap();
        }
        let any = Any {
            type_url: "types.containerd.io/runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            runtime_options_config_path(&any).unwrap(),
            Some(PathBuf::from("/p.toml"))
        );
    }

    #[test]
    fn start_stdin_options_name_the_config() {
        use protobuf::Message;
        let bytes = runtime_options(Path::new("/p.toml"))
            .write_to_bytes()
            .unwrap();
        assert_eq!(
            config_in_start_options(&bytes),
            Some(PathBuf::from("/p.toml"))
        );
        assert_eq!(config_in_start_options(b""), None);
        assert_eq!(config_in_start_options(b"\xff\xff garbage"), None);
    }

    #[test]
    fn other_option_types_carry_no_config() {
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x0a, 0x01, b'x'],
            ..Default::default()
        };
        assert_eq!(runtime_options_config_path(&any).unwrap(), None);
    }

    #[test]
    fn garbage_options_are_an_error_naming_the_type() {
        let any = Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value: vec![0x12, 0x7f],
            ..Default::default()
        };
        let e = runtime_options_config_path(&any).unwrap_err().to_string();
        assert!(e.contains("runtimeoptions.v1.Options"), "{e}");
    }

    #[test]
    fn a_missing_config_from_the_options_is_refused() {
        let any = runtime_options(Path::new("/nonexistent/husk/plugins.toml"));
        let e = config_path(Some(&any)).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/husk/plugins.toml"), "{e}");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0), ExitStatus::Code(0));
        assert_eq!(exit_status(3), ExitStatus::Code(3));
        assert_eq!(exit_status(137), ExitStatus::Signal(9));
    }
}
