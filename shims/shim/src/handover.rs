//! The handover of a live swap: what one shim binary passes to the next
//! across `execve` (docs/live-swap.md).
//!
//! The state travels as JSON in a memfd whose number is in the
//! environment ([`HANDOVER_ENV`]); the descriptors it lists by number (the
//! listening socket, every accepted connection, every stdio FIFO, pipe and
//! pty master, the log FIFO, the binaries) are inherited: their CLOEXEC
//! flag is cleared just before the exec, and every other descriptor gets
//! CLOEXEC, so nothing else leaks ([`prepare_fds`]). The successor sets
//! CLOEXEC on them again as soon as it owns them, so container processes
//! it starts later inherit none.
//!
//! Versioned: [`Handover::version`] is [`HANDOVER_VERSION`] of the writer;
//! a reader accepts [`MIN_HANDOVER_VERSION`]`..=`[`HANDOVER_VERSION`]. New
//! fields carry defaults, so a newer binary reads an older binary's
//! handover. `--check-handover VERSION` (the probe run before every swap)
//! answers whether this binary reads that version.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};
use crate::events::EventRecord;
use crate::io::IoFds;
use crate::state::ShimState;
use crate::ttrpc_server::Parked;

/// The version of the handover this binary writes.
pub const HANDOVER_VERSION: u32 = 1;
/// The oldest handover version this binary reads.
pub const MIN_HANDOVER_VERSION: u32 = 1;
/// The environment variable holding the handover memfd's number.
pub const HANDOVER_ENV: &str = "HUSK_SHIM_HANDOVER";
/// Set (to the reason) when a binary takes back a swap its successor
/// could not complete.
pub const ROLLBACK_ENV: &str = "HUSK_SHIM_ROLLBACK";
/// The probe flag.
pub const CHECK_FLAG: &str = "--check-handover";

/// Everything a successor needs. See the module docs.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Handover {
    pub version: u32,
    /// [`ShimState`] as JSON (its own `version` inside).
    pub state: serde_json::Value,
    /// The stdio descriptors of each process.
    pub io: Vec<ProcIoRecord>,
    /// The listening socket.
    pub listener: RawFd,
    /// Accepted connections, with the requests parked on them.
    pub connections: Vec<ConnRecord>,
    /// Events queued and not sent yet, oldest first.
    pub events: Vec<EventRecord>,
    /// The log FIFO containerd reads, if the shim had one.
    pub log: Option<RawFd>,
    /// The `Upgrade` request that started this swap, answered by whoever
    /// serves next.
    pub upgrade: Option<PendingUpgrade>,
    /// The binary the successor was executed from (open, to be closed).
    pub exe: Option<RawFd>,
    /// The binary that wrote this handover, kept open so that a successor
    /// that cannot take over can exec it again (rollback).
    pub previous_exe: Option<RawFd>,
    /// The path the successor was asked to run (what it reports as its
    /// binary).
    pub target: String,
    /// CLOCK_MONOTONIC when the swap started, in microseconds.
    pub started_monotonic_us: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcIoRecord {
    pub container: String,
    pub exec_id: String,
    pub fds: IoFds,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnRecord {
    pub fd: RawFd,
    pub parked: Vec<Parked>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PendingUpgrade {
    /// Index into [`Handover::connections`].
    pub connection: usize,
    pub stream_id: u32,
    pub old_binary: String,
    pub old_version: String,
    pub old_profile: String,
}

/// What `--check-handover` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    pub shim: String,
    pub version: String,
    pub profile: String,
    pub handover_min: u32,
    pub handover_max: u32,
}

impl Handover {
    /// Whether this binary reads handover `version`.
    pub fn check_version(version: u32) -> std::result::Result<(), String> {
        if (MIN_HANDOVER_VERSION..=HANDOVER_VERSION).contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "handover version {version} is not readable by this binary \
                 (it reads versions {MIN_HANDOVER_VERSION} to {HANDOVER_VERSION})"
            ))
        }
    }

    /// Every descriptor the handover lists.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut all = vec![self.listener];
        all.extend(self.connections.iter().map(|c| c.fd));
        for p in &self.io {
            let f = &p.fds;
            for pump in [&f.stdin, &f.tty_in, &f.tty_out].into_iter().flatten() {
                all.extend([pump.from, pump.to]);
            }
            all.extend(f.keepalive.iter().copied());
            all.extend(f.console);
        }
        all.extend(self.log);
        all.extend(self.exe);
        all.extend(self.previous_exe);
        all
    }

    pub fn shim_state(&self) -> Result<ShimState> {
        serde_json::from_value(self.state.clone())
            .map_err(|e| ShimError::Internal(format!("the handover's shim state: {e}")))
    }

    /// Writes the handover into a new memfd (CLOEXEC set; cleared by
    /// [`prepare_fds`]).
    pub fn to_memfd(&self) -> Result<OwnedFd> {
        let json = serde_json::to_vec(self)
            .map_err(|e| ShimError::Internal(format!("serializing the handover: {e}")))?;
        let fd = nix::sys::memfd::memfd_create(
            c"husk-shim-handover",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| ShimError::io("create the handover memfd")(e.into()))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(&json)
            .map_err(ShimError::io("write the handover"))?;
        Ok(OwnedFd::from(f))
    }

    /// Reads a handover from `fd` (from the start).
    pub fn read(fd: &OwnedFd) -> Result<Handover> {
        let mut f = std::fs::File::from(
            fd.try_clone()
                .map_err(ShimError::io("duplicate the handover memfd"))?,
        );
        f.rewind().map_err(ShimError::io("rewind the handover"))?;
        let mut json = Vec::new();
        f.read_to_end(&mut json)
            .map_err(ShimError::io("read the handover"))?;
        let h: Handover = serde_json::from_slice(&json)
            .map_err(|e| ShimError::Internal(format!("the handover is not readable: {e}")))?;
        Handover::check_version(h.version).map_err(ShimError::Internal)?;
        Ok(h)
    }
}

/// The handover memfd this process was started with, if any: the
/// environment variable is removed (container processes must not see it).
pub fn inherited() -> Option<std::result::Result<OwnedFd, String>> {
    let v = std::env::var_os(HANDOVER_ENV)?;
    // Single-threaded still: nothing else reads the environment now.
    std::env::remove_var(HANDOVER_ENV);
    let fd: RawFd = match v.to_str().and_then(|s| s.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => {
            return Some(Err(format!(
                "{HANDOVER_ENV}={v:?} is not a descriptor number"
            )))
        }
    };
    if nix::fcntl::fcntl(
        // SAFETY: only checked for validity here.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_err()
    {
        return Some(Err(format!("{HANDOVER_ENV}: descriptor {fd} is not open")));
    }
    // SAFETY: the descriptor is open (checked) and was passed to this
    // process for it alone.
    Some(Ok(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The reason a successor gave up, when this binary was executed again to
/// take its swap back.
pub fn rollback_reason() -> Option<String> {
    let v = std::env::var(ROLLBACK_ENV).ok()?;
    std::env::remove_var(ROLLBACK_ENV);
    Some(v)
}

static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Records the log FIFO's descriptor (opened by `main`), for the handover.
pub fn set_log_fd(fd: RawFd) {
    LOG_FD.store(fd, Ordering::Relaxed);
}

pub fn log_fd() -> Option<RawFd> {
    let fd = LOG_FD.load(Ordering::Relaxed);
    (fd >= 0).then_some(fd)
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: the descriptor is borrowed for the fcntl calls only.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD)?;
    let mut flags = nix::fcntl::FdFlag::from_bits_retain(flags);
    flags.set(nix::fcntl::FdFlag::FD_CLOEXEC, on);
    nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: borrowed for one fcntl.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fd >= 0 && nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// The open descriptors of this process, above stdio.
fn open_fds() -> std::io::Result<Vec<RawFd>> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    // The directory's own descriptor was listed too; it is closed now.
    fds.retain(|&fd| is_open(fd));
    Ok(fds)
}

/// Right before the exec: `keep` loses CLOEXEC, every other descriptor
/// gets it. Returns the descriptors whose CLOEXEC was cleared, for
/// [`restore_cloexec`] if the exec fails.
pub fn prepare_fds(keep: &[RawFd]) -> Result<Vec<RawFd>> {
    let open = open_fds().map_err(ShimError::io("list /proc/self/fd"))?;
    for fd in &open {
        if !keep.contains(fd) {
            set_cloexec(*fd, true).map_err(ShimError::io(format!("set CLOEXEC on fd {fd}")))?;
        }
    }
    let mut cleared = Vec::new();
    for &fd in keep {
        if let Err(e) = set_cloexec(fd, false) {
            restore_cloexec(&cleared);
            return Err(ShimError::io(format!("keep fd {fd} open across the exec"))(
                e,
            ));
        }
        cleared.push(fd);
    }
    Ok(cleared)
}

/// Sets CLOEXEC again (after a failed exec, or in the successor once it
/// owns its inheritance).
pub fn restore_cloexec(fds: &[RawFd]) {
    for &fd in fds {
        if let Err(e) = set_cloexec(fd, true) {
            tracing::warn!(fd, "setting CLOEXEC again: {e}");
        }
    }
}

/// In the successor: closes every descriptor above stdio that the
/// handover does not list (nothing but the handover may be inherited).
/// Returns how many were closed.
pub fn close_unlisted(listed: &[RawFd]) -> usize {
    let Ok(open) = open_fds() else { return 0 };
    let mut closed = 0;
    for fd in open {
        if !listed.contains(&fd) {
            // SAFETY: an inherited descriptor nothing in this process owns
            // yet (only the handover's are taken over, after this).
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            closed += 1;
        }
    }
    closed
}

/// Executes the binary open at `exe` in place of this process, with `argv`
/// and the current environment plus `extra` (replacing variables of the
/// same names). Returns only on failure.
pub fn exec(exe: &OwnedFd, argv: &[OsString], extra: &[(&str, String)]) -> ShimError {
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).ok();
    let Some(args) = argv.iter().map(|a| cstr(a)).collect::<Option<Vec<_>>>() else {
        return ShimError::InvalidArgument("an argument holds a NUL byte".into());
    };
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            k != HANDOVER_ENV && k != ROLLBACK_ENV && !extra.iter().any(|(n, _)| k == *n)
        })
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    for (k, v) in extra {
        if let Ok(c) = CString::new(format!("{k}={v}")) {
            env.push(c);
        }
    }
    // execveat(fd, "", AT_EMPTY_PATH): exactly the file that was probed,
    // whatever happened to its path since. A script needs the descriptor
    // open after the exec; the successor closes it.
    let err = nix::unistd::execveat(
        exe.as_fd(),
        c"",
        &args,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map(|_| ())
    .unwrap_err();
    ShimError::io("execute the new shim binary")(err.into())
}

trait IntoVec {
    fn into_vec(self) -> Vec<u8>;
}

impl IntoVec for OsString {
    fn into_vec(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

/// CLOCK_MONOTONIC in microseconds (the same clock on both sides of the
/// exec).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(Handover::check_version(HANDOVER_VERSION).is_ok());
        assert!(Handover::check_version(HANDOVER_VERSION + 1).is_err());
        assert!(Handover::check_version(0).is_err());
    }

    /// A version-1 handover as the first release writes it: any later
    /// binary must read it (fields added since take their defaults).
    #[test]
    fn reads_a_version_1_handover() {
        let json = r#"{
            "version": 1,
            "state": {"version": 1, "profile": "Native", "namespace": "default",
                      "group": "c1", "socket_address": "unix:///run/containerd/s/x",
                      "containerd_address": "/run/c.sock", "ttrpc_address": "",
                      "publish_binary": "", "runtime_root": "/run/containerd/husk/default",
                      "containers": {"c1": {"id": "c1", "bundle": "/b",
                        "init": {"exec_id": "", "pid": 42, "stdin": "", "stdout": "/f/1",
                                 "stderr": "/f/2", "terminal": false, "started": true,
                                 "exit": null, "exit_published": false},
                        "execs": {}, "paused": false}}},
            "io": [{"container": "c1", "exec_id": "", "fds": {"keepalive": [7, 8]}}],
            "listener": 3,
            "connections": [{"fd": 9, "parked": [{"stream_id": 5, "flags": 0, "request": [1, 2]}]}],
            "events": [],
            "log": 4,
            "upgrade": {"connection": 0, "stream_id": 7},
            "target": "/usr/local/bin/containerd-shim-husk-v2"
        }"#;
        let h: Handover = serde_json::from_str(json).unwrap();
        let st = h.shim_state().unwrap();
        assert_eq!(st.containers["c1"].init.pid, 42);
        assert!(st.containers["c1"].init.started);
        let mut fds = h.fds();
        fds.sort();
        assert_eq!(fds, vec![3, 4, 7, 8, 9]);
        assert_eq!(h.connections[0].parked[0].stream_id, 5);
        assert_eq!(h.upgrade.unwrap().stream_id, 7);
    }

    #[test]
    fn round_trips_through_a_memfd() {
        let h = Handover {
            version: HANDOVER_VERSION,
            state: serde_json::to_value(ShimState::default()).unwrap(),
            listener: 3,
            target: "/x".into(),
            ..Default::default()
        };
        let fd = h.to_memfd().unwrap();
        let back = Handover::read(&fd).unwrap();
        assert_eq!(back.target, "/x");
        assert_eq!(back.listener, 3);
        let future = Handover {
            version: HANDOVER_VERSION + 1,
            ..Default::default()
        };
        assert!(Handover::read(&future.to_memfd().unwrap()).is_err());
    }
}
