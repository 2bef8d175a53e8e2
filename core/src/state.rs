//! The daemon's persistent state: where things live under `--root` and
//! `--state`, and the container records, written crash-safely (temp file,
//! fsync, rename: [`write_atomic`]).
//!
//! ```text
//! <root>/images/                        the image store (crate::images)
//! <root>/containers/<id>/container.json the container's record
//! <root>/containers/<id>/log.jsonl      its stdout/stderr (crate::logs)
//! <root>/containers/<id>/upper, work    its overlay upper and work dirs
//! <root>/volumes/<name>/_data           named volumes (crate::volumes)
//! <state>/huskd.sock                    the API socket (default)
//! <state>/events.sock                   the ttrpc events endpoint (TTRPC_ADDRESS)
//! <state>/bundles/<id>/                 the OCI bundle: config.json, rootfs/
//!                                       (overlay), stdout/stderr FIFOs, the
//!                                       shim's address and shim.pid files
//! <state>/spares/<id>/                  a spare shim's directory: its log
//!                                       FIFO, address and shim.pid; renamed
//!                                       to bundles/<id> when a create takes it
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::{ContainerSummary, CreateParams, Status};
use crate::error::{CoreError, IoContext, Result};

/// The record's format version.
pub const RECORD_VERSION: u32 = 1;

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::images::index::write_atomic(path, bytes)?;
    Ok(())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The daemon's directories.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Layout {
        Layout {
            root: root.into(),
            state: state.into(),
        }
    }

    /// Creates the directories (mode 0700).
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [
            self.root.clone(),
            self.state.clone(),
            self.containers_dir(),
            self.root.join("volumes"),
            self.state.join("bundles"),
            self.spares_dir(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("bundles").join(id)
    }
    /// Where spare shims wait (`crate::spares`), each in the directory
    /// that becomes its container's bundle.
    pub fn spares_dir(&self) -> PathBuf {
        self.state.join("spares")
    }
    pub fn events_socket(&self) -> PathBuf {
        self.state.join("events.sock")
    }
    pub fn default_socket(&self) -> PathBuf {
        self.state.join("huskd.sock")
    }
}

/// Everything huskd knows about one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub name: String,
    /// The image's full name.
    pub image: String,
    /// The process args.
    pub command: Vec<String>,
    /// The runtime as asked (name or path).
    pub runtime: String,
    /// The shim binary it resolved to.
    pub shim_binary: PathBuf,
    pub bundle: PathBuf,
    pub status: Status,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The shim's ttrpc address while it serves this container.
    pub shim_address: Option<String>,
    /// Whether the overlay rootfs is mounted on `bundle/rootfs`.
    pub rootfs_mounted: bool,
    /// Named volumes it uses.
    pub volumes: Vec<String>,
    pub params: CreateParams,
}

impl ContainerRecord {
    /// Records an exit with `code`: stopped, no shim, no mounted rootfs.
    pub fn set_exited(&mut self, code: i32) {
        self.status = Status::Stopped;
        self.exit_code = Some(code);
        self.finished_at = Some(now());
        self.shim_address = None;
        self.rootfs_mounted = false;
        self.pid = 0;
    }

    pub fn summary(&self) -> ContainerSummary {
        ContainerSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            command: self.command.clone(),
            status: self.status,
            pid: self.pid,
            exit_code: self.exit_code,
            runtime: self.runtime.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }

    fn path(layout: &Layout, id: &str) -> PathBuf {
        layout.container_dir(id).join("container.json")
    }

    /// Saves the record: temp file, rename, and fsyncs, except for a
    /// `--rm` container. Such a container does not outlive a reboot (its
    /// overlay is volatile, its record goes at its exit), so its record
    /// only has to survive huskd, which the page cache does; a host crash
    /// that loses it leaves a container directory without a record and
    /// maybe a lease, both removed by the next huskd's recovery.
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("a record serializes");
        let path = Self::path(layout, &self.id);
        if self.params.auto_remove {
            crate::images::index::write_replace(&path, &bytes)?;
            Ok(())
        } else {
            write_atomic(&path, &bytes)
        }
    }

    /// Every record under `<root>/containers`. A directory without a
    /// readable record (a crash during create) is reported and skipped.
    pub fn load_all(layout: &Layout) -> Result<Vec<ContainerRecord>> {
        let dir = layout.containers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            let id = e.file_name().to_string_lossy().into_owned();
            let p = Self::path(layout, &id);
            match fs::read(&p) {
                Ok(b) => match serde_json::from_slice::<ContainerRecord>(&b) {
                    Ok(r) => out.push(r),
                    Err(err) => {
                        tracing::warn!(path = %p.display(), %err, "unreadable container record")
                    }
                },
                Err(err) => tracing::warn!(path = %p.display(), %err, "container without a record"),
            }
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }
}

/// A new random container id: 32 hex digits.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .ctx(|| "reading /dev/urandom".into())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks a container name: 1-128 of `[A-Za-z0-9_.-]`, starting with an
/// alphanumeric.
pub fn validate_name(name: &str) -> Result<()> {
    check_name("container", name)
}

/// The naming rule containers and volumes share (as Docker's).
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "invalid {kind} name {name:?}: use 1-128 of [A-Za-z0-9_.-], starting with a letter or digit"
        )))
    }
}
