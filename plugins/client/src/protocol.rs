//! The plugin service's wire protocol: what a shim asks `husk-plugind` and
//! what it answers, over a root-only unix socket.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON. A
//! connection carries any number of request/reply pairs, one at a time. A
//! request names the plugin config it is about (the daemon keeps one warm
//! host per config) and carries only plain data: the container's id, its
//! runtime and its bundle directory. The service reads the bundle's
//! `config.json` and writes the edited spec and `husk-policy.json` back
//! itself, so the spec never crosses the socket (twice, as a string
//! escaped inside JSON); the reply carries the verdict and the notes the
//! shim logs. The WIT types never cross the socket: a shim needs neither
//! wasmtime nor the generated bindings.
//!
//! Every request says which protocol [`VERSION`] it speaks; a daemon that
//! speaks none it serves ([`OLDEST_SERVED`] up to [`VERSION`]) answers with
//! an error that says to restart it. Version 1 differed only in the
//! create: the request carried the spec's text and the reply the edited
//! spec, for the shim to write.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 2;

/// The oldest version the service still serves: a shim of the previous
/// release, spare or running, keeps working with a newer service through
/// an upgrade.
pub const OLDEST_SERVED: u32 = 1;

/// The bundle's spec, which the service reads at create (protocol 2).
pub const SPEC_FILE: &str = "config.json";
/// Written into the bundle by the service when plugins edited the spec or
/// an audit-mode plugin would have denied it, for huskd (`husk inspect`)
/// and operators: a [`DecisionRecord`].
pub const DECISION_FILE: &str = "husk-policy.json";

/// The largest frame either side accepts (a spec with a large seccomp
/// profile is a few hundred KiB).
pub const MAX_FRAME: usize = 16 << 20;

/// A request: the protocol version and the operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub op: Op,
}

impl Request {
    pub fn new(op: Op) -> Request {
        Request {
            version: VERSION,
            op,
        }
    }
}

/// A [`Request`] to write, borrowing its operation.
#[derive(Debug, Serialize)]
pub struct RequestRef<'a> {
    pub version: u32,
    pub op: &'a Op,
}

impl<'a> RequestRef<'a> {
    pub fn new(op: &'a Op) -> RequestRef<'a> {
        RequestRef {
            version: VERSION,
            op,
        }
    }
}

/// What a shim asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Load (or check for changes) the host for this config now, so the
    /// next create finds it warm. Answered with [`Reply::Loading`] before
    /// the load starts.
    Preload { config: PathBuf },
    /// Run the create hooks.
    Create(CreateRequest),
    /// Run the start hooks.
    Start { config: PathBuf, event: Started },
    /// Run the exit hooks.
    Exit { config: PathBuf, event: Exited },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Preload { .. } => "preload",
            Op::Create(_) => "create",
            Op::Start { .. } => "start",
            Op::Exit { .. } => "exit",
        }
    }
}

/// A container about to be created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub config: PathBuf,
    pub id: String,
    /// The bundle directory, absolute (protocol 2): the service reads its
    /// [`SPEC_FILE`] and writes the edited spec and [`DECISION_FILE`]
    /// back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// The bundle's `config.json`, as read (protocol 1, instead of
    /// `bundle`: the reply carries the edited spec for the shim to write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_json: Option<String>,
    /// `io.containerd.husk.v2`, `io.containerd.husk-hardened.v2`, ...
    pub runtime: String,
    pub hardened: bool,
}

/// A container's init started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub id: String,
    pub pid: u32,
    pub started_at: SystemTime,
    pub annotations: Vec<(String, String)>,
}

/// A container's init exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exited {
    pub id: String,
    pub pid: u32,
    /// containerd's exit status: the code, or 128 + the signal.
    pub status: u32,
    pub oom_killed: bool,
    pub started_at: SystemTime,
    pub exited_at: SystemTime,
    pub annotations: Vec<(String, String)>,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A preload was accepted (the load runs after this reply).
    Loading,
    Created(CreateReply),
    /// A lifecycle hook ran on every plugin that has it.
    Notified {
        reports: Vec<Report>,
    },
    Error(ServiceError),
}

/// The create hooks' outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateReply {
    /// The enforced deny that stopped the chain, if any.
    pub denial: Option<Denial>,
    /// Every edit applied, described, with the plugin that asked for it.
    pub edits: Vec<Note>,
    /// Audit-mode would-denies.
    pub audit_denials: Vec<Note>,
    /// The edited spec, validated again, when the plugins changed it and
    /// the request carried the spec (protocol 1). A request that names its
    /// bundle finds the edited spec written there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_json: Option<String>,
    /// The final spec's annotations, sorted by key (for the lifecycle hooks).
    pub annotations: Vec<(String, String)>,
    pub reports: Vec<Report>,
    /// Set when no plugin of the config has a start or exit hook: these
    /// files (the config and its plugins) as they were. While they are
    /// unchanged, the service would run nothing at start and exit (it
    /// reloads only on a change), so the shim does not ask it. `None`
    /// (and from a service before this field): always ask.
    #[serde(default)]
    pub no_lifecycle_hooks_while: Option<Vec<FileStamp>>,
}

/// Size, mtime and inode of a file, or `None` if it is missing: how the
/// service notices that a config or plugin file changed.
pub type Stamp = Option<(u64, i64, i64, u64)>;

/// A file and its [`Stamp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub path: PathBuf,
    pub stamp: Stamp,
}

/// The [`Stamp`] of `path` now.
pub fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.size(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// Whether every file still has its stamp.
pub fn unchanged(files: &[FileStamp]) -> bool {
    files.iter().all(|f| stamp(&f.path) == f.stamp)
}

/// A spec's annotations as the hooks get them: pairs sorted by key.
pub fn sorted_annotations(
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = annotations
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// Which plugin denied the container, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub plugin: String,
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "denied by policy {}: {}", self.plugin, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub plugin: String,
    pub note: String,
}

/// What was decided about a container, kept in its bundle as
/// [`DECISION_FILE`].
#[derive(Debug, Default, Serialize)]
pub struct DecisionRecord<'a> {
    pub edits: &'a [Note],
    pub audit_denials: &'a [Note],
}

/// One plugin's part in a hook, for the shim's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub plugin: String,
    pub hook: String,
    /// The outcome, as the host's `Outcome` prints it.
    pub outcome: String,
    /// A trap, timeout, memory cap or invalid mutation.
    pub failed: bool,
    pub elapsed_us: u64,
}

/// A request the daemon could not serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a frame, not JSON, not a request, or another protocol version.
    BadRequest,
    /// The plugin config (or a plugin in it) cannot be loaded.
    Config,
    /// The container's spec does not parse.
    Spec,
    /// The bundle's spec cannot be read, or the edited spec or the
    /// decision record cannot be written there (protocol 2).
    Bundle,
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error(ServiceError {
            kind,
            message: message.into(),
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("empty frame (length 0); a frame is a 4-byte big-endian length and that much JSON")]
    Empty,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("the connection closed {got} bytes into a {expected}-byte frame")]
    Truncated { expected: usize, got: usize },
}

/// Writes `value` as one frame, in one write.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, value).map_err(std::io::Error::other)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(FrameError::TooLarge(len)));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&buf)
}

/// Reads one frame's bytes; `None` on a clean end of stream (before a
/// frame begins).
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(FrameError::Truncated {
            expected: header.len(),
            got,
        });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(body))
}

/// Reads until `buf` is full or the stream ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The service's words for a request of a version it does not serve;
/// clients read the versions it speaks back from them
/// ([`versions_spoken`]).
pub fn version_refusal(version: u32) -> String {
    format!(
        "the request speaks protocol version {version}, this husk-plugind speaks \
         {OLDEST_SERVED} to {VERSION}; restart husk-plugind (stop it: the next shim starts \
         the installed one)"
    )
}

/// The newest version a service speaks, read from its refusal of a
/// request's version: `... this husk-plugind speaks 1; ...` (release 1's
/// words) or [`version_refusal`]'s. `None` for any other error.
pub fn versions_spoken(refusal: &ServiceError) -> Option<u32> {
    if refusal.kind != ErrorKind::BadRequest {
        return None;
    }
    let (_, rest) = refusal.message.split_once("this husk-plugind speaks ")?;
    let (versions, _) = rest.split_once(';')?;
    versions.rsplit(" to ").next()?.trim().parse().ok()
}

/// Only the version of a request, read before the rest so that a request
/// of another version gets a clear answer rather than a parse error.
#[derive(Deserialize)]
pub struct VersionOnly {
    pub version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_a_frame() {
        let req = Request::new(Op::Create(CreateRequest {
            config: "/etc/husk/plugins.toml".into(),
            id: "c1".into(),
            bundle: Some("/run/husk/bundles/c1".into()),
            spec_json: None,
            runtime: "io.containerd.husk.v2".into(),
            hardened: false,
        }));
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len() - 4
        );
        let mut r = &buf[..];
        let body = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&body).unwrap(), req);
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_borrowed_request_is_written_as_an_owned_one() {
        let op = Op::Preload {
            config: "/p.toml".into(),
        };
        assert_eq!(
            serde_json::to_string(&RequestRef::new(&op)).unwrap(),
            serde_json::to_string(&Request::new(op)).unwrap()
        );
    }

    #[test]
    fn bad_frames_are_named() {
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Empty)));
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut r).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        let mut r: &[u8] = &[0, 0, 0, 10, b'{'];
        let e = read_frame(&mut r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the connection closed 1 bytes into a 10-byte frame"
        );
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn times_and_events_round_trip() {
        let op = Op::Exit {
            config: "/p.toml".into(),
            event: Exited {
                id: "c".into(),
                pid: 7,
                status: 137,
                oom_killed: true,
                started_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 6),
                exited_at: SystemTime::now(),
                annotations: vec![("a".into(), "b".into())],
            },
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
    }
}
