//! The API between `husk` and `huskd`: JSON lines on a unix socket.
//!
//! A client connects, writes one [`Request`] as a JSON line and reads
//! [`Frame`]s, one JSON line each, until a final `ok` or `error` frame; then
//! the server closes the connection. Streaming methods (`container.start`
//! with `attach`, `container.logs` with `follow`) send `output` frames
//! first. Every request names the API version it speaks (`"api": 1`); a
//! server refuses versions it does not know. docs/api.md lists every method.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;

/// The default socket of huskd.
pub const DEFAULT_SOCKET: &str = "/run/husk/huskd.sock";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub api: u32,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

/// One line of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// Container output: `stream` is `stdout` or `stderr`; `data` is the
    /// bytes as UTF-8 (invalid sequences replaced).
    Output { stream: String, data: String },
    /// `container.run` created the container: `result` is what
    /// `container.create` returns; output and the final `ok` follow.
    Created { result: Value },
    /// The method succeeded; `result` is its value.
    Ok { result: Value },
    /// The method failed; `kind` is one of `not_found`, `conflict`,
    /// `invalid_argument`, `runtime`, `image`, `io`, `internal`,
    /// `bad_request`, `denied` (a policy plugin refused the container).
    Error { kind: String, message: String },
}

/// What a client may send after its request line, one JSON line each, to
/// a method that attaches stdin (`container.start` with `attach` of a
/// container created with `stdin`, `container.exec` with `stdin`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Bytes for the process's stdin (UTF-8).
    Stdin { data: String },
    /// End of stdin: the process reads EOF.
    CloseStdin,
    /// The terminal's size changed.
    Resize { width: u32, height: u32 },
}

/// `container.create` parameters (what `husk run`/`husk create` send).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateParams {
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's Cmd (and with `entrypoint`, its Entrypoint).
    pub cmd: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// `K=V`, added to (and overriding) the image's Env.
    pub env: Vec<String>,
    /// `SRC:DST[:ro|:rw]`: SRC an absolute host path (bind mount) or a
    /// volume name (created on first use).
    pub volumes: Vec<String>,
    /// Bytes.
    pub memory: Option<i64>,
    /// CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    /// A runtime name from the daemon's config, or an absolute path to a
    /// shim v2 binary; the daemon's default when absent.
    pub runtime: Option<String>,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Keep stdin open (`-i`): a FIFO the shim reads, fed by attach.
    pub stdin: bool,
    /// A terminal (`-t`): stdout and stderr merge on a pty.
    pub tty: bool,
    pub labels: BTreeMap<String, String>,
}

/// A container's life, as `ps` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// One container, as `ps` and `inspect` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub status: Status,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub runtime: String,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}
