//! The shims huskd runs: `shim.list` (binary, version, pid, uptime) and
//! `shim.upgrade` (live swap to a new binary: the shim execs it in place,
//! its containers keep running; docs/live-swap.md). Both speak
//! `husk.shim.v1.Shim` on each container's shim socket; a shim that does
//! not serve it (runc's) is listed from Task.Connect and /proc, and
//! cannot be swapped.
//!
//! The CLI side (`husk shim ls`, `husk shim upgrade`) is [`cli`].

use std::path::PathBuf;

use husk_shim_api::{InfoRequest, ShimClient, UpgradeRequest};
use serde::{Deserialize, Serialize};

use crate::containers::Manager;
use crate::error::{CoreError, Result};
use crate::shim_client;

/// One shim, as `husk shim ls` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShimInfo {
    pub container: String,
    pub name: String,
    pub runtime: String,
    pub binary: String,
    pub version: String,
    pub profile: String,
    pub pid: u32,
    /// Seconds since the shim's first binary started.
    pub uptime: u64,
    /// Live swaps so far (0 for shims that cannot swap).
    pub swaps: u32,
    /// Whether it serves husk.shim.v1.Shim (can be swapped live).
    pub swappable: bool,
    /// Why it could not be asked, if it could not.
    pub error: Option<String>,
    /// A spare shim: serving, waiting for the container `container`
    /// (docs/architecture.md, "Spare shims"); listed on request only.
    #[serde(default)]
    pub spare: bool,
}

/// `shim.upgrade` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpgradeParams {
    /// A container (id, prefix or name); `None` with `all`.
    pub container: Option<String>,
    pub all: bool,
    /// The new binary: an absolute path, or a runtime name (`native`,
    /// `hardened`); `None`: the file now at each shim's own path.
    pub binary: Option<String>,
}

/// The outcome for one shim.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpgradeResult {
    pub container: String,
    pub ok: bool,
    pub pid: u32,
    pub old_binary: String,
    pub old_version: String,
    pub binary: String,
    pub version: String,
    pub profile: String,
    pub swaps: u32,
    pub pause_ms: f64,
    pub note: String,
    pub error: Option<String>,
}

fn ctx(secs: i64) -> ttrpc::context::Context {
    shim_client::ctx(secs)
}

/// Running containers with a shim: (id, name, runtime, shim address).
fn served(m: &Manager) -> Vec<(String, String, String, String)> {
    m.list(false)
        .into_iter()
        .filter_map(|s| {
            let rec = m.get(&s.id).ok()?.record();
            Some((rec.id, rec.name, rec.runtime, rec.shim_address?))
        })
        .collect()
}

async fn connect(address: &str) -> Result<ttrpc::asynchronous::Client> {
    ttrpc::asynchronous::Client::connect(address)
        .await
        .map_err(|e| CoreError::Runtime(format!("connecting to the shim at {address}: {e}")))
}

fn not_husk(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::RpcStatus(s) if s.message.contains("service does not exist"))
}

/// `shim.list`; with `spares`, the spare shims too.
pub async fn list(m: &Manager, spares: bool) -> Vec<ShimInfo> {
    let mut out = Vec::new();
    if spares {
        for (id, address, binary) in m.spares.listing() {
            let mut row = ShimInfo {
                container: id.clone(),
                binary: binary.to_string_lossy().into_owned(),
                spare: true,
                ..Default::default()
            };
            if let Err(e) = describe(&id, &address, &mut row).await {
                row.error = Some(e.to_string());
            }
            out.push(row);
        }
    }
    for (id, name, runtime, address) in served(m) {
        let mut row = ShimInfo {
            container: id.clone(),
            name,
            runtime,
            ..Default::default()
        };
        if let Err(e) = describe(&id, &address, &mut row).await {
            row.error = Some(e.to_string());
        }
        if row.binary.is_empty() {
            if let Ok(c) = m.get(&id) {
                row.binary = c.record().shim_binary.to_string_lossy().into_owned();
            }
        }
        out.push(row);
    }
    out
}

async fn describe(id: &str, address: &str, row: &mut ShimInfo) -> Result<()> {
    let client = connect(address).await?;
    match ShimClient::new(client.clone())
        .info(ctx(5), &InfoRequest::new())
        .await
    {
        Ok(i) => {
            let now = now_secs();
            row.binary = i.binary;
            row.version = i.version;
            row.profile = i.profile;
            row.pid = i.pid;
            row.uptime = now.saturating_sub(i.started_at.max(0) as u64);
            row.swaps = i.swaps;
            row.swappable = true;
            Ok(())
        }
        Err(e) if not_husk(&e) => {
            // Any other shim v2: what Task.Connect and /proc tell.
            let task = containerd_shim_protos::shim_async::TaskClient::new(client);
            let c = task
                .connect(
                    ctx(5),
                    &containerd_shim_protos::api::ConnectRequest {
                        id: id.to_string(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| shim_client::rpc_err("asking the shim who it is", e))?;
            row.pid = c.shim_pid;
            row.version = c.version;
            row.uptime = process_age(c.shim_pid).unwrap_or(0);
            row.binary = std::fs::read_link(format!("/proc/{}/exe", c.shim_pid))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(())
        }
        Err(e) => Err(shim_client::rpc_err("asking the shim who it is", e)),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since process `pid` started (from /proc).
fn process_age(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 22 (starttime) is the 20th after the command name.
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((uptime - start as f64 / hz).max(0.0) as u64)
}

/// `shim.upgrade`: swaps the chosen shims one after the other.
pub async fn upgrade(m: &Manager, p: UpgradeParams) -> Result<Vec<UpgradeResult>> {
    let binary = match p.binary.as_deref() {
        None | Some("") => String::new(),
        Some(b) if b.contains('/') => {
            let path = PathBuf::from(b);
            if !path.is_absolute() {
                return Err(CoreError::InvalidArgument(format!(
                    "--binary {b}: give an absolute path (or a runtime name)"
                )));
            }
            b.to_string()
        }
        Some(name) => m
            .runtimes
            .resolve(Some(name))?
            .1
            .to_string_lossy()
            .into_owned(),
    };
    let targets: Vec<(String, String)> = match (&p.container, p.all) {
        (Some(_), true) | (None, false) => {
            return Err(CoreError::InvalidArgument(
                "name one container, or --all".into(),
            ))
        }
        (None, true) => served(m)
            .into_iter()
            .map(|(id, _, _, addr)| (id, addr))
            .collect(),
        (Some(key), false) => {
            let rec = m.get(key)?.record();
            let addr = rec.shim_address.ok_or_else(|| {
                CoreError::Conflict(format!(
                    "container {} has no running shim (it is {})",
                    rec.id, rec.status
                ))
            })?;
            vec![(rec.id, addr)]
        }
    };
    let mut out = Vec::new();
    for (id, address) in targets {
        let mut r = UpgradeResult {
            container: id.clone(),
            ..Default::default()
        };
        match swap_one(&address, &binary).await {
            Ok(u) => {
                r.ok = true;
                r.pid = u.pid;
                r.old_binary = u.old_binary;
                r.old_version = u.old_version;
                r.binary = u.binary;
                r.version = u.version;
                r.profile = u.profile;
                r.swaps = u.swaps;
                r.pause_ms = u.pause_micros as f64 / 1000.0;
                r.note = u.note;
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        out.push(r);
    }
    Ok(out)
}

async fn swap_one(address: &str, binary: &str) -> Result<husk_shim_api::UpgradeResponse> {
    let client = ShimClient::new(connect(address).await?);
    let req = UpgradeRequest {
        binary: binary.to_string(),
        ..Default::default()
    };
    client.upgrade(ctx(60), &req).await.map_err(|e| match e {
        ref e if not_husk(e) => CoreError::Conflict(
            "its shim is not a husk shim (no husk.shim.v1.Shim): it cannot be swapped live".into(),
        ),
        ttrpc::Error::RpcStatus(s) => CoreError::Runtime(s.message().to_string()),
        other => CoreError::Runtime(format!(
            "the shim hung up during the swap ({other}): the new binary crashed after it was \
             executed; huskd cleans the container up as after any dead shim"
        )),
    })
}

/// `husk shim ...`: the CLI side, over the API.
pub mod cli {
    use serde_json::{json, Value};

    use crate::client::{Client, ClientError};

    /// Rows of `husk shim ls [--spares]` (header first).
    pub fn ls(c: &Client, spares: bool) -> Result<(Value, Vec<Vec<String>>), ClientError> {
        let v = c.call("shim.list", json!({"spares": spares}))?;
        let mut rows = vec![[
            "CONTAINER",
            "PID",
            "BINARY",
            "VERSION",
            "PROFILE",
            "UPTIME",
            "SWAPS",
        ]
        .map(String::from)
        .to_vec()];
        for s in v.as_array().into_iter().flatten() {
            let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
            let mut id = text("container");
            id.truncate(12);
            if s["spare"].as_bool() == Some(true) {
                id = format!("{id} (spare)");
            }
            let version = match (text("version"), s["error"].as_str()) {
                (v, None) => v,
                (_, Some(e)) => format!("? ({e})"),
            };
            rows.push(vec![
                id,
                s["pid"].as_u64().unwrap_or(0).to_string(),
                text("binary"),
                version,
                if s["swappable"].as_bool() == Some(true) {
                    text("profile")
                } else {
                    "-".into()
                },
                human_duration(s["uptime"].as_u64().unwrap_or(0)),
                s["swaps"].as_u64().unwrap_or(0).to_string(),
            ]);
        }
        Ok((v, rows))
    }

    /// `husk shim upgrade`: one line per shim; `Ok(false)` if any failed.
    pub fn upgrade(
        c: &Client,
        container: Option<&str>,
        all: bool,
        binary: Option<&str>,
    ) -> Result<(Value, Vec<String>, bool), ClientError> {
        let binary = binary.map(|b| {
            if b.contains('/') {
                std::fs::canonicalize(b)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| b.to_string())
            } else {
                b.to_string()
            }
        });
        let v = c.call(
            "shim.upgrade",
            json!({"container": container, "all": all, "binary": binary}),
        )?;
        let mut lines = Vec::new();
        let mut all_ok = true;
        for r in v.as_array().into_iter().flatten() {
            let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let mut id = text("container");
            id.truncate(12);
            if r["ok"].as_bool() == Some(true) {
                lines.push(format!(
                    "{id}: swapped live, pid {} kept: {} {} -> {} {} ({}), swap #{}, paused {:.1} ms",
                    r["pid"].as_u64().unwrap_or(0),
                    text("old_binary"),
                    text("old_version"),
                    text("binary"),
                    text("version"),
                    text("profile"),
                    r["swaps"].as_u64().unwrap_or(0),
                    r["pause_ms"].as_f64().unwrap_or(0.0)
                ));
                if !text("note").is_empty() {
                    lines.push(format!("{id}: note: {}", text("note")));
                }
            } else {
                all_ok = false;
                lines.push(format!("{id}: not swapped: {}", text("error")));
            }
        }
        if lines.is_empty() {
            lines.push("no running container has a shim".into());
        }
        Ok((v, lines, all_ok))
    }

    fn human_duration(secs: u64) -> String {
        match secs {
            s if s < 60 => format!("{s}s"),
            s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
            s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
            s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        }
    }
}
