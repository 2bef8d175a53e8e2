//! Plugin hooks for the shim: the operator's policy and lifecycle plugins
//! run at create (before anything exists), start and exit, in the plugin
//! service `husk-plugind` (crate husk-plugins), not in the shim: the shim
//! links no wasmtime, only `husk-plugin-client`, and asks the service over
//! its socket, starting the service when nothing serves there.
//!
//! Which config applies to a container: the path in the task's runtime
//! options (`runtimeoptions.v1.Options.config_path`, which containerd's CRI
//! `options = { ConfigPath = ... }`, `ctr run --runtime-config-path` and
//! huskd all send), else `$HUSK_PLUGIN_CONFIG`, else
//! `/etc/husk/plugins.toml` when it exists. No config: no plugins, and the
//! service is never asked.
//!
//! When the service cannot be reached or dies during a create, the config's
//! on-error policy decides: the create fails (fail closed) unless every
//! plugin that may run at create has `on-error = "allow"` or is in audit
//! mode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_plugin_client::client::{Client, ClientError};
use husk_plugin_client::config::{Hook, HostConfig, Mode, OnError};
use husk_plugin_client::protocol::{
    self, CreateRequest, Exited, FileStamp, Op, Reply, Report, Started,
};
use protobuf::well_known_types::any::Any;
use serde::Serialize;

use crate::error::{Result, ShimError};
use crate::state::ExitRecord;
use crate::Profile;

pub const DEFAULT_CONFIG: &str = "/etc/husk/plugins.toml";
pub const CONFIG_ENV: &str = "HUSK_PLUGIN_CONFIG";
/// A config the shim asks the plugin service to load as the shim starts,
/// so the first Create finds the service running and the plugins ready
/// (huskd sets it; `start` sets it from the runtime options containerd
/// writes on its stdin).
pub const PRELOAD_ENV: &str = "HUSK_PLUGIN_PRELOAD";
/// containerd's generic runtime options (`runtimeoptions.v1.Options`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

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

/// Asks the plugin service to load the config named by
/// `$HUSK_PLUGIN_PRELOAD`, if any, starting the service if nothing serves:
/// by the first Create, the service runs and has the plugins ready. Fire
/// and forget: when the service serves (as for every spare shim after the
/// first), the request is written and the connection dropped (the service
/// loads after its answer, read or not); only starting the service takes
/// a thread, off the caller's.
pub fn preload(plugins: &Arc<Plugins>) {
    let Some(config) = std::env::var_os(PRELOAD_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    let op = Op::Preload {
        config: PathBuf::from(config),
    };
    if plugins.client.send_if_serving(&op).is_some() {
        return;
    }
    let client = plugins.client.clone();
    let spawned = std::thread::Builder::new()
        .name("husk-plugin-preload".into())
        .spawn(move || {
            if let Err(e) = client.call(op) {
                tracing::warn!(%e, "preloading plugins");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(%e, "cannot start a thread to preload plugins");
    }
}

/// The shim's link to the plugin service, and its lifecycle hooks in
/// flight.
pub struct Plugins {
    client: Client,
    /// Lifecycle hooks still running; Shutdown waits for them.
    hooks_running: Mutex<usize>,
    hook_done: Condvar,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            client: Client::from_env(),
            hooks_running: Mutex::new(0),
            hook_done: Condvar::new(),
        }
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

/// The runtime name plugins see for this shim binary.
fn runtime_name(profile: Profile) -> &'static str {
    match profile {
        Profile::Native => "io.containerd.husk.v2",
        Profile::Hardened => "io.containerd.husk-hardened.v2",
    }
}

fn log_reports(id: &str, reports: &[Report]) {
    for r in reports {
        if r.failed {
            tracing::warn!(
                container = id,
                plugin = r.plugin,
                hook = r.hook,
                outcome = r.outcome,
                "plugin failed"
            );
        } else {
            tracing::debug!(
                container = id,
                plugin = r.plugin,
                hook = r.hook,
                us = r.elapsed_us,
                outcome = r.outcome,
                "plugin hook"
            );
        }
    }
}

/// A container's create hooks on their way to the plugin service. The
/// shim daemon sends the request ([`send_create`]) just before it forks the
/// create worker, which reads the reply ([`on_create`]): the service runs
/// the plugins while the worker starts, instead of after.
pub struct CreateCall {
    config: PathBuf,
    id: String,
    bundle: PathBuf,
    op: Op,
    /// The connection the request was written on, where the reply is read;
    /// `None`: nothing served the socket, and the worker starts the
    /// service and asks.
    sent: Option<std::os::unix::net::UnixStream>,
}

impl CreateCall {
    /// The connection's descriptor, which the worker must inherit.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.sent.as_ref().map(|s| s.as_raw_fd())
    }
}

/// Asks the plugin service to run the create hooks of `config` on the
/// bundle, if the service serves now (never waiting to start it: then the
/// worker does, in [`on_create`]). The service reads the bundle's spec
/// itself.
pub fn send_create(
    plugins: &Plugins,
    config: PathBuf,
    id: &str,
    profile: Profile,
    bundle: &Path,
) -> Result<CreateCall> {
    // The service's working directory is not the shim's.
    let bundle = std::path::absolute(bundle).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "the bundle path {} cannot be made absolute: {e}",
            bundle.display()
        ))
    })?;
    let request = CreateRequest {
        config: config.clone(),
        id: id.into(),
        bundle: Some(bundle.clone()),
        spec_json: None,
        runtime: runtime_name(profile).into(),
        hardened: profile == Profile::Hardened,
    };
    let op = Op::Create(request);
    let sent = plugins.client.send_if_serving(&op);
    Ok(CreateCall {
        config,
        id: id.into(),
        bundle,
        op,
        sent,
    })
}

/// The create hooks' outcome, from the plugin service: a denial is an
/// error naming the plugin and its reason. The service has written the
/// edits (validated again) to the bundle's `config.json`, and the edits
/// and audit would-denies to its `husk-policy.json`.
pub fn on_create(plugins: &Plugins, call: CreateCall) -> Result<Binding> {
    let CreateCall {
        config,
        id,
        bundle,
        op,
        sent,
    } = call;
    let id = id.as_str();
    let answer = match sent.map(|stream| plugins.client.receive(stream, "create")) {
        // An older service refused the request: asked again, the call
        // replaces it with the installed one.
        None | Some(Err(ClientError::Outdated { .. })) => plugins.client.call(op),
        Some(answer) => answer,
    };
    let reply = match answer {
        Ok(Reply::Created(reply)) => reply,
        Ok(other) => {
            return Err(ShimError::Internal(format!(
                "husk-plugind answered a create with {other:?}; restart husk-plugind"
            )))
        }
        Err(ClientError::Service(e)) => {
            return Err(ShimError::InvalidArgument(e.message));
        }
        Err(e) => return unavailable(config, id, &bundle.join(protocol::SPEC_FILE), &e),
    };
    log_reports(id, &reply.reports);
    if let Some(denial) = &reply.denial {
        tracing::warn!(
            container = id,
            plugin = denial.plugin,
            reason = denial.reason,
            "denied by policy"
        );
        return Err(ShimError::Denied(denial.to_string()));
    }
    for n in &reply.audit_denials {
        tracing::warn!(
            container = id,
            plugin = n.plugin,
            reason = n.note,
            "audit: would deny"
        );
    }
    Ok(Binding {
        config,
        annotations: reply.annotations,
        started_at: None,
        exit_before_start: None,
        no_lifecycle_hooks_while: reply.no_lifecycle_hooks_while,
    })
}

/// The service could not be used for a create: the config's on-error
/// policy decides whether the container goes ahead without its plugins.
fn unavailable(config: PathBuf, id: &str, spec_path: &Path, e: &ClientError) -> Result<Binding> {
    let denies = match HostConfig::load(&config) {
        Err(load) => Some(format!(
            "the plugin config cannot be read either to apply its on-error policy ({load})"
        )),
        Ok(c) => c
            .plugins
            .iter()
            .find(|p| {
                p.wants(Hook::Create) && p.mode == Mode::Enforce && p.on_error == OnError::Deny
            })
            .map(|p| {
                format!(
                    "plugin {} of {} fails closed (on-error = \"deny\")",
                    p.name,
                    config.display()
                )
            }),
    };
    if let Some(why) = denies {
        tracing::error!(container = id, error = %e, "plugin service unavailable: denying");
        return Err(ShimError::Denied(format!(
            "container {id} not created: {why}, and {e}"
        )));
    }
    tracing::warn!(container = id, error = %e,
        "plugin service unavailable; every create plugin of the config allows on error: created without plugins");
    let text = std::fs::read(spec_path)
        .map_err(ShimError::io(format!("reading {}", spec_path.display())))?;
    let spec = husk_runtime::spec::parse(&text).map_err(|reason| {
        ShimError::InvalidArgument(format!("{}: {reason}", spec_path.display()))
    })?;
    let annotations = protocol::sorted_annotations(spec.annotations().as_ref());
    Ok(Binding {
        config,
        annotations,
        started_at: None,
        exit_before_start: None,
        no_lifecycle_hooks_while: None,
    })
}

/// What the lifecycle hooks need to know about a container, kept with it
/// (and handed over by a live swap).
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct Binding {
    pub config: PathBuf,
    pub annotations: Vec<(String, String)>,
    /// When Start returned; `None` before.
    pub started_at: Option<SystemTime>,
    /// The init exited before Start returned (with this OOM flag): the
    /// exit hook runs after the start hook, once Start returns.
    #[serde(default)]
    pub exit_before_start: Option<bool>,
    /// From the create's reply: no plugin of the config has a start or
    /// exit hook while these files are unchanged.
    #[serde(default)]
    pub no_lifecycle_hooks_while: Option<Vec<FileStamp>>,
}

impl Binding {
    pub fn start_op(&self, id: &str, pid: i32) -> Op {
        Op::Start {
            config: self.config.clone(),
            event: Started {
                id: id.into(),
                pid: pid as u32,
                started_at: self.started_at.unwrap_or_else(SystemTime::now),
                annotations: self.annotations.clone(),
            },
        }
    }

    pub fn exit_op(&self, id: &str, pid: i32, exit: &ExitRecord, oom_killed: bool) -> Op {
        let exited_at =
            UNIX_EPOCH + Duration::new(exit.at_secs.max(0) as u64, exit.at_nanos.max(0) as u32);
        Op::Exit {
            config: self.config.clone(),
            event: Exited {
                id: id.into(),
                pid: pid as u32,
                status: exit.status,
                oom_killed,
                started_at: self.started_at.unwrap_or(exited_at),
                exited_at,
                annotations: self.annotations.clone(),
            },
        }
    }
}

/// Runs lifecycle hooks (`ops`, from [`Binding::start_op`] and
/// [`Binding::exit_op`], in order) off the caller's thread: a slow plugin
/// (bounded by its time limit) never holds up the task it observes.
/// Nothing at all (no thread, no request) when the create's reply said no
/// plugin has these hooks and the config and plugin files are unchanged
/// since: the service would have run nothing.
pub fn notify(plugins: &Arc<Plugins>, binding: &Binding, id: &str, ops: Vec<Op>) {
    if binding
        .no_lifecycle_hooks_while
        .as_deref()
        .is_some_and(protocol::unchanged)
    {
        return;
    }
    *plugins
        .hooks_running
        .lock()
        .unwrap_or_else(|p| p.into_inner()) += 1;
    let running = plugins.clone();
    let id = id.to_owned();
    let spawned = std::thread::Builder::new()
        .name("husk-plugin-hook".into())
        .spawn(move || {
            for op in ops {
                match running.client.call(op) {
                    Ok(Reply::Notified { reports }) => log_reports(&id, &reports),
                    Ok(other) => tracing::warn!(?other, "unexpected reply to a lifecycle hook"),
                    Err(e) => tracing::warn!(container = id, %e, "lifecycle hook skipped"),
                }
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

    /// A shim whose plugin service cannot be started (no binary).
    fn without_a_service(dir: &Path) -> Plugins {
        Plugins {
            client: Client {
                socket: dir.join("plugind/plugind.sock"),
                binary: dir.join("no-such-husk-plugind"),
            },
            ..Default::default()
        }
    }

    #[test]
    fn an_unreachable_service_fails_closed_unless_every_create_plugin_allows() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let mut spec = husk_runtime::spec::default_spec(false);
        spec.set_annotations(Some(
            [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
        ));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let plugins = without_a_service(tmp.path());
        let create = |toml: &str| {
            let config = tmp.path().join("plugins.toml");
            std::fs::write(&config, toml).unwrap();
            let call = send_create(&plugins, config, "c1", Profile::Native, &bundle)?;
            assert!(call.fd().is_none(), "nothing serves the socket");
            on_create(&plugins, call)
        };
        let plugin = "[[plugin]]\nname = \"gate\"\npath = \"gate.wasm\"\n";
        let e = create(plugin).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::PERMISSION_DENIED);
        let e = e.to_string();
        assert!(e.contains("husk-plugind cannot be started"), "{e}");
        assert!(e.contains("no-such-husk-plugind"), "{e}");
        assert!(e.contains("plugin gate"), "{e}");
        assert!(e.contains("fails closed"), "{e}");
        for allowing in [
            format!("{plugin}on-error = \"allow\"\n"),
            format!("{plugin}mode = \"audit\"\n"),
            format!("{plugin}hooks = [\"start\", \"exit\"]\n"),
            "[defaults]\non-error = \"allow\"\n".to_string() + plugin,
        ] {
            let b = create(&allowing).unwrap_or_else(|e| panic!("{allowing}: {e}"));
            assert_eq!(
                b.annotations,
                vec![("a".into(), "1".into()), ("b".into(), "2".into())]
            );
        }
        let e = create("not toml [").unwrap_err().to_string();
        assert!(e.contains("cannot be read either"), "{e}");
        assert!(e.contains("husk-plugind"), "{e}");
    }

    #[test]
    fn a_missing_config_from_the_options_is_refused() {
        let any = runtime_options(Path::new("/nonexistent/husk/plugins.toml"));
        let e = config_path(Some(&any)).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/husk/plugins.toml"), "{e}");
    }
}
