//! All the shim's state, in one plain struct.
//!
//! Everything a successor binary needs to take over (live shim swap, see
//! `swap.rs` and docs/live-swap.md) lives in [`ShimState`]: it serializes
//! to JSON. The only parts that do not are the open descriptors of
//! [`ProcIo`], which a successor inherits across execve instead (the
//! handover lists their numbers, see `io::IoFds`), and the runtime-only
//! counters marked `serde(skip)`.
//!
//! A newer binary reads an older binary's state: fields added later carry
//! `#[serde(default)]` (the struct-level one on [`ShimState`]).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};
use crate::io::Pump;
use crate::Profile;

/// The version of the serialized form, for a successor that reads it.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ShimState {
    pub version: u32,
    pub profile: Profile,
    pub namespace: String,
    /// The id the socket is named after: the sandbox id for a pod, else the
    /// first container's id.
    pub group: String,
    /// `unix:///run/containerd/s/<sha256>`.
    pub socket_address: String,
    pub containerd_address: String,
    pub ttrpc_address: String,
    pub publish_binary: String,
    /// The runtime library's state root.
    pub runtime_root: PathBuf,
    pub containers: BTreeMap<String, Container>,
    /// The binary serving now: what `Info` reports, and what a swap
    /// without a binary (SIGUSR2, `upgrade` without `-binary`) execs again
    /// (the file now at that path: an upgrade installed on disk).
    pub binary: PathBuf,
    /// When the shim's first binary started (unix seconds).
    pub started_at: i64,
    /// When the binary serving now took over (unix seconds).
    pub serving_since: i64,
    /// Live swaps so far.
    pub swaps: u32,
    /// A Create was received (a shim that never gets one exits after its
    /// idle timeout).
    pub ever_created: bool,
    /// Launches (create, exec start) under way: their process may exit
    /// before its pid is recorded, so orphan sweeping waits for them.
    #[serde(skip)]
    pub launches_in_flight: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// Set when the shim mounted `CreateTaskRequest.rootfs` here.
    pub rootfs_mount: Option<PathBuf>,
    pub init: Proc,
    pub execs: BTreeMap<String, Proc>,
    pub paused: bool,
    /// OOM kills already reported as `/tasks/oom`.
    pub oom_kills_reported: u64,
    /// The plugin config whose lifecycle hooks see this container.
    #[serde(default)]
    pub plugins: Option<crate::plugins::Binding>,
    /// What the init's exit needs, from the create (`None`: a worker
    /// loads it from the runtime's state).
    pub init_exit: Option<husk_runtime::InitExit>,
    /// The init's exec FIFO when Start needs no worker (no poststart
    /// hooks; `husk_runtime::Started::start_fifo`).
    pub start_fifo: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Proc {
    /// Empty for the container's init.
    pub exec_id: String,
    /// 0 until the process exists.
    pub pid: i32,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// An exec's OCI process, as JSON (from `ExecProcessRequest.spec`).
    pub spec: Option<serde_json::Value>,
    /// Start returned (and `/tasks/start` or `/tasks/exec-started` was
    /// published): from then on the reaper publishes the exit itself.
    pub started: bool,
    pub exit: Option<ExitRecord>,
    /// `/tasks/exit` was published for this process.
    pub exit_published: bool,
    #[serde(skip)]
    pub io: ProcIo,
}

/// Descriptors a process's stdio depends on. Carried across a live swap by
/// inheritance, not serialization (`ProcIo::park`, `io::IoHandover`).
#[derive(Debug, Default)]
pub struct ProcIo {
    /// The stdin pump. Dropping it (CloseIO, exit) closes the process's
    /// stdin pipe: the process reads EOF.
    pub stdin_stop: Option<Pump>,
    /// Readers of stdout/stderr FIFOs, kept so the process's writes never
    /// fail with EPIPE when the client goes away (`ctr run -d`), and kept
    /// until Delete, so what the process wrote last stays readable in the
    /// FIFO for a client that reconnects after the exit.
    pub output_keepalive: Vec<OwnedFd>,
    /// The pty master of a terminal process.
    pub console: Option<Arc<OwnedFd>>,
    /// The terminal's stdin copier; dropping it stops it.
    pub copier_stop: Option<Pump>,
    /// The terminal's output copier; it runs until the terminal closes.
    pub tty_out: Option<Pump>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal.
    pub status: u32,
    pub at_secs: i64,
    pub at_nanos: i32,
}

impl ExitRecord {
    pub fn now(status: u32) -> ExitRecord {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        ExitRecord {
            status,
            at_secs: d.as_secs() as i64,
            at_nanos: d.subsec_nanos() as i32,
        }
    }

    pub fn timestamp(&self) -> protobuf::well_known_types::timestamp::Timestamp {
        let mut t = protobuf::well_known_types::timestamp::Timestamp::new();
        t.seconds = self.at_secs;
        t.nanos = self.at_nanos;
        t
    }
}

/// What containerd's `State` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Proc {
    pub fn status(&self, paused: bool) -> ProcStatus {
        if self.exit.is_some() {
            ProcStatus::Stopped
        } else if !self.started {
            ProcStatus::Created
        } else if paused {
            ProcStatus::Paused
        } else {
            ProcStatus::Running
        }
    }

    pub fn is_running(&self) -> bool {
        self.pid > 0 && self.exit.is_none()
    }
}

impl ShimState {
    pub fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| {
            ShimError::NotFound(format!("container {id:?} does not exist in this shim"))
        })
    }

    pub fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| {
            ShimError::NotFound(format!("container {id:?} does not exist in this shim"))
        })
    }

    /// The init (`exec_id` empty) or an exec of container `id`.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<&Proc> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(&c.init);
        }
        c.execs.get(exec_id).ok_or_else(|| {
            ShimError::NotFound(format!(
                "exec {exec_id:?} does not exist in container {id:?}"
            ))
        })
    }

    pub fn process_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
        let c = self.container_mut(id)?;
        if exec_id.is_empty() {
            return Ok(&mut c.init);
        }
        c.execs.get_mut(exec_id).ok_or_else(|| {
            ShimError::NotFound(format!(
                "exec {exec_id:?} does not exist in container {id:?}"
            ))
        })
    }

    /// Every (container id, exec id, pid) still waiting to be reaped.
    pub fn live_pids(&self) -> Vec<(String, String, i32)> {
        let mut out = Vec::new();
        for c in self.containers.values() {
            for p in std::iter::once(&c.init).chain(c.execs.values()) {
                if p.is_running() {
                    out.push((c.id.clone(), p.exec_id.clone(), p.pid));
                }
            }
        }
        out
    }

    pub fn knows_pid(&self, pid: i32) -> bool {
        self.containers
            .values()
            .any(|c| c.init.pid == pid || c.execs.values().any(|p| p.pid == pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let mut s = ShimState {
            version: STATE_VERSION,
            namespace: "default".into(),
            group: "g".into(),
            ..Default::default()
        };
        let mut c = Container {
            id: "c1".into(),
            bundle: "/b".into(),
            ..Default::default()
        };
        c.init.pid = 42;
        c.init.started = true;
        c.execs.insert(
            "e1".into(),
            Proc {
                exec_id: "e1".into(),
                pid: 43,
                exit: Some(ExitRecord::now(3)),
                ..Default::default()
            },
        );
        s.containers.insert("c1".into(), c);
        let json = serde_json::to_string(&s).unwrap();
        let back: ShimState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.containers["c1"].init.pid, 42);
        assert_eq!(back.containers["c1"].execs["e1"].exit.unwrap().status, 3);
        assert_eq!(back.live_pids(), vec![("c1".into(), String::new(), 42)]);
        assert!(back.knows_pid(43));
    }

    #[test]
    fn statuses() {
        let mut p = Proc::default();
        assert_eq!(p.status(false), ProcStatus::Created);
        p.started = true;
        p.pid = 1;
        assert_eq!(p.status(true), ProcStatus::Paused);
        assert_eq!(p.status(false), ProcStatus::Running);
        p.exit = Some(ExitRecord::now(0));
        assert_eq!(p.status(false), ProcStatus::Stopped);
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let s = ShimState::default();
        assert!(matches!(s.process("nope", ""), Err(ShimError::NotFound(_))));
    }
}
