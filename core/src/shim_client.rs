//! Driving any shim v2 binary with containerd's protocol: `start` with
//! containerd's flags and environment (the printed address read back),
//! ttrpc `containerd.task.v2.Task` on that address, and `delete -bundle`
//! for a shim that died. Nothing here is specific to husk's shims.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::shim_async::TaskClient;
use protobuf::Message;

use crate::error::{CoreError, Result};

/// The containerd namespace huskd gives its shims.
pub const NAMESPACE: &str = "husk";

/// Runtime names and the shim binaries they stand for.
#[derive(Clone, Debug)]
pub struct Runtimes {
    pub default: String,
    /// name -> binary name (searched) or absolute path.
    pub map: BTreeMap<String, String>,
}

impl Default for Runtimes {
    fn default() -> Self {
        let mut map = BTreeMap::new();
        map.insert("native".into(), "containerd-shim-husk-v2".into());
        map.insert("hardened".into(), "containerd-shim-husk-hardened-v2".into());
        map.insert("runc".into(), "containerd-shim-runc-v2".into());
        Runtimes {
            default: "native".into(),
            map,
        }
    }
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // Beside huskd first: a build tree keeps huskd and the shims together.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in [
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// `bin` beside huskd, else on PATH, else in the usual system dirs.
pub fn find_binary(bin: &str) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn install_hint(name: &str, bin: &str) -> String {
    match name {
        "runc" => {
            "install Debian's containerd (`apt-get install containerd`), which ships it".into()
        }
        "native" | "hardened" => format!(
            "build it (`cargo build --release -p husk-shim`) and put {bin} beside huskd or on PATH"
        ),
        _ => format!("install {bin}, or fix the runtime {name:?} in huskd's configuration"),
    }
}

impl Runtimes {
    /// Adds or replaces `name=binary` (a `--runtime` flag of huskd).
    pub fn set(&mut self, spec: &str) -> Result<()> {
        let (n, b) = spec.split_once('=').ok_or_else(|| {
            CoreError::InvalidArgument(format!("invalid runtime {spec:?}: use NAME=BINARY"))
        })?;
        self.map.insert(n.to_string(), b.to_string());
        Ok(())
    }

    /// The runtime's name (the default when `None`) and its shim binary.
    pub fn resolve(&self, name: Option<&str>) -> Result<(String, PathBuf)> {
        let name = name.unwrap_or(&self.default).to_string();
        let bin = if name.starts_with('/') {
            name.clone()
        } else {
            self.map.get(&name).cloned().ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "unknown runtime {name:?}: use one of {} or an absolute path to a shim v2 binary",
                    self.map.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?
        };
        if bin.starts_with('/') {
            let p = PathBuf::from(&bin);
            if p.is_file() {
                return Ok((name, p));
            }
            return Err(CoreError::Runtime(format!(
                "runtime {name:?}: the shim binary {bin} does not exist; {}",
                install_hint(&name, &bin)
            )));
        }
        if let Some(p) = find_binary(&bin) {
            return Ok((name, p));
        }
        Err(CoreError::Runtime(format!(
            "runtime {name:?} is missing: its shim binary {bin} is not beside huskd nor on PATH; {}",
            install_hint(&name, &bin)
        )))
    }
}

/// What a shim is told about its manager.
#[derive(Clone, Debug)]
pub struct ShimLauncher {
    /// `-address` / GRPC_ADDRESS: the daemon's API socket (shims derive
    /// their socket name from it).
    pub address: String,
    /// TTRPC_ADDRESS: the events endpoint.
    pub ttrpc_address: String,
    /// `-publish-binary`.
    pub publish_binary: String,
    /// `-debug` (as containerd passes it when it logs at debug level).
    pub debug: bool,
}

impl ShimLauncher {
    fn command(&self, bin: &Path, id: &str, bundle: &Path) -> Command {
        let mut c = Command::new(bin);
        c.args([
            "-namespace",
            NAMESPACE,
            "-address",
            &self.address,
            "-publish-binary",
            &self.publish_binary,
            "-id",
            id,
        ])
        .args(self.debug.then_some("-debug"))
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", &self.ttrpc_address)
        .env("GRPC_ADDRESS", &self.address)
        .env("NAMESPACE", NAMESPACE)
        .env("PATH", shim_path())
        .stdin(Stdio::null());
        c
    }

    /// `shim start`: returns the address the shim printed. `plugin_config`,
    /// the config its Create will name, the shim asks the plugin service
    /// (husk-plugind) to load meanwhile, starting it if it is not running.
    pub fn start(
        &self,
        bin: &Path,
        id: &str,
        bundle: &Path,
        plugin_config: Option<&Path>,
    ) -> Result<String> {
        self.start_with_idle_timeout(bin, id, bundle, plugin_config, None)
    }

    /// [`ShimLauncher::start`], telling a husk shim how long to wait for
    /// its first container before it exits (`HUSK_SHIM_IDLE_TIMEOUT`; other
    /// shims ignore it): a spare shim's own deadline.
    pub fn start_with_idle_timeout(
        &self,
        bin: &Path,
        id: &str,
        bundle: &Path,
        plugin_config: Option<&Path>,
        idle_timeout: Option<std::time::Duration>,
    ) -> Result<String> {
        let mut c = self.command(bin, id, bundle);
        c.arg("start");
        if let Some(t) = idle_timeout {
            c.env("HUSK_SHIM_IDLE_TIMEOUT", t.as_secs_f64().to_string());
        }
        if let Some(config) = plugin_config {
            c.env("HUSK_PLUGIN_PRELOAD", config);
        }
        let out = c
            .output()
            .map_err(|e| CoreError::Runtime(format!("running {} start: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(CoreError::Runtime(format!(
                "{} start failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if addr.is_empty() {
            return Err(CoreError::Runtime(format!(
                "{} start printed no address",
                bin.display()
            )));
        }
        Ok(addr)
    }

    /// `shim -bundle B delete`: cleans up after a dead shim; returns its
    /// DeleteResponse (the exit status it reports).
    pub fn delete(&self, bin: &Path, id: &str, bundle: &Path) -> Result<DeleteResponse> {
        let mut c = self.command(bin, id, bundle);
        c.arg("-bundle").arg(bundle).arg("delete");
        let out = c
            .output()
            .map_err(|e| CoreError::Runtime(format!("running {} delete: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(CoreError::Runtime(format!(
                "{} delete failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(DeleteResponse::parse_from_bytes(&out.stdout).unwrap_or_default())
    }
}

/// The PATH shims get: ours plus the system dirs (runc's shim needs runc).
fn shim_path() -> String {
    let mut p = std::env::var("PATH").unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !p.split(':').any(|x| x == d) {
            if !p.is_empty() {
                p.push(':');
            }
            p.push_str(d);
        }
    }
    p
}

/// A ttrpc Task client on a shim's address.
pub async fn connect(address: &str) -> Result<TaskClient> {
    let c = ttrpc::asynchronous::Client::connect(address)
        .await
        .map_err(|e| CoreError::Runtime(format!("connecting to the shim at {address}: {e}")))?;
    Ok(TaskClient::new(c))
}

/// Deletes the task and shuts the shim down, ignoring failures: the last
/// step of every container's life, whether it exited or its create failed.
pub async fn delete_and_shutdown(client: &TaskClient, id: &str) {
    delete_task(client, id).await;
    shutdown(client, id).await;
}

/// Deletes the task, ignoring failures.
pub async fn delete_task(client: &TaskClient, id: &str) {
    let delete = containerd_shim_protos::api::DeleteRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let _ = client.delete(ctx(10), &delete).await;
}

/// Shuts the shim down (it exits once it holds no container), ignoring
/// failures.
pub async fn shutdown(client: &TaskClient, id: &str) {
    let shutdown = containerd_shim_protos::api::ShutdownRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let _ = client.shutdown(ctx(5), &shutdown).await;
}

/// The task options that name the plugin config a shim applies:
/// containerd's generic `runtimeoptions.v1.Options { config_path = 2 }`,
/// which is also what CRI's `options = { ConfigPath = ... }` and
/// `ctr run --runtime-config-path` send.
pub fn plugin_options(config_path: &Path) -> protobuf::well_known_types::any::Any {
    let mut value = Vec::new();
    {
        let mut out = protobuf::CodedOutputStream::vec(&mut value);
        out.write_string(2, &config_path.to_string_lossy())
            .expect("writing to a Vec cannot fail");
        out.flush().expect("writing to a Vec cannot fail");
    }
    protobuf::well_known_types::any::Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    }
}

/// A context with a deadline (seconds); 0 for none.
pub fn ctx(secs: i64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(secs * 1_000_000_000)
}

/// A ttrpc error as a runtime error.
pub fn rpc_err(what: &str, e: ttrpc::Error) -> CoreError {
    match &e {
        // The shim's message is the whole story: `denied by policy P: R`.
        ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::PERMISSION_DENIED => {
            CoreError::Denied(s.message().to_string())
        }
        ttrpc::Error::RpcStatus(s) => CoreError::Runtime(format!("{what}: {}", s.message())),
        _ => CoreError::Runtime(format!("{what}: {e}")),
    }
}
