//! What the runtime remembers about a container between commands, kept in
//! `<root>/<id>/state.json`, and the status derived from the live system.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::error::{Context, Error, Result};
use crate::sys;

pub const OCI_VERSION: &str = "1.2.0";
const STATE_FILE: &str = "state.json";
const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// Host pid of the container's init; 0 while it is being created.
    pub pid: i32,
    /// Start time of `pid`, so a recycled pid is never mistaken for ours.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339.
    pub created: String,
    pub annotations: HashMap<String, String>,
    pub cgroup: Cgroup,
    /// Kept so poststop hooks run even if the bundle is gone by then.
    pub hooks: Option<Hooks>,
    /// The container's process, the defaults for `exec` (as runc keeps it).
    #[serde(default)]
    pub process: Option<Process>,
    /// `linux.seccomp`, which `exec`'d processes get too (as with runc).
    #[serde(default)]
    pub seccomp: Option<LinuxSeccomp>,
    /// The profile as compiled for the init, so `exec` needs no libseccomp
    /// run (milliseconds for Docker's profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_program: Option<crate::seccomp::Program>,
    pub owner: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state document (`husk-runtime state`, and hooks' stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: HashMap<String, String>,
}

impl ContainerState {
    /// Whether the recorded init process is still alive (and not a zombie).
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && matches!(sys::process_start_time(self.pid),
                Ok((start, state)) if start == self.pid_start_time && state != 'Z' && state != 'X')
    }

    pub fn oci(&self, status: Status) -> OciState {
        OciState {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }

    pub fn oci_json(&self, status: Status) -> String {
        serde_json::to_string(&self.oci(status)).unwrap_or_default()
    }
}

/// The directory holding every container's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn exec_fifo(&self, id: &str) -> PathBuf {
        self.dir(id).join(EXEC_FIFO)
    }

    /// Claims `id`: the directory's creation is the atomic test for
    /// "already exists".
    pub fn claim(&self, id: &str) -> Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .context(|| format!("create state root {}", self.root.display()))?;
        let dir = self.dir(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::AlreadyExists(id.into()))
            }
            Err(e) => Err(e).context(|| format!("create state directory {}", dir.display())),
        }
    }

    pub fn load(&self, id: &str) -> Result<ContainerState> {
        crate::spec::validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    id: id.into(),
                    root: self.root.clone(),
                })
            }
            Err(e) => return Err(e).context(|| format!("read {}", path.display())),
        };
        serde_json::from_slice(&text).map_err(|e| Error::Io {
            context: format!(
                "{} is corrupt; remove it with `husk-runtime delete --force {id}`",
                path.display()
            ),
            source: std::io::Error::other(e),
        })
    }

    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let bytes = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .context(|| "encode state".into())?;
        // No fsync: the state describes processes, which a host crash
        // takes with it (runc does not sync it either); an fsync cost 1 to
        // 15 ms per create on a busy disk, twice.
        replace_file(&self.dir(&state.id).join(STATE_FILE), &bytes)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context(|| format!("remove state of {id}")),
        }
    }

    /// Ids with a state directory, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(|| format!("read {}", self.root.display())),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Derives the status from the live system, never from a stored field,
    /// so it cannot go stale.
    pub fn status(&self, state: &ContainerState) -> Status {
        if state.pid == 0 {
            return Status::Stopped;
        }
        if !state.init_alive() {
            return Status::Stopped;
        }
        if self.exec_fifo(&state.id).exists() {
            return Status::Created;
        }
        if state.cgroup.is_frozen().unwrap_or(false) {
            return Status::Paused;
        }
        Status::Running
    }
}

/// Crash-safe write: temp file, fsync, rename. A reader sees the old or the
/// new contents, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_renamed(path, bytes, true)
}

/// [`write_atomic`] without the fsync: a reader (or a crash of this
/// process) still sees the old or the new contents, but a crash of the
/// machine may lose both. For files that mean nothing after a host crash,
/// such as a bundle's config.json rewritten before its container exists.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_renamed(path, bytes, false)
}

fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        sys::replace_by_rename(&tmp, path)
    })()
    .context(|| format!("write {}", path.display()))
}

/// Now, in RFC 3339 with nanoseconds, as runc reports `created`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn claim_refuses_an_existing_id_and_load_reports_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path().join("root"));
        states.claim("a").unwrap();
        assert!(matches!(states.claim("a"), Err(Error::AlreadyExists(_))));
        let err = states.load("nope").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("husk-runtime list"));
        assert_eq!(states.ids().unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
    }
}
