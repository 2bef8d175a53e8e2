//! The only place the cgroups module touches the filesystem.
//!
//! Every helper takes a full path, so the logic above it runs unchanged
//! against the real cgroupfs or against a fake tree in a tempdir. On a fake
//! tree `mkdir` makes an empty directory and writes create plain files; on
//! cgroupfs the kernel provides the files, and opening one that does not
//! exist with `O_CREAT` fails (EACCES), which [`write`] turns into a
//! [`CgroupError::MissingFile`] with a hint saying what to do.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// Read a whole file. A missing file is an error.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        hint: read_hint(path, &source),
        path: path.to_path_buf(),
        source,
    })
}

/// Read a whole file; `None` when it (or its directory) does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            hint: read_hint(path, &source),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `value` to a cgroup file (`O_CREAT|O_TRUNC`, like `std::fs::write`).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::debug!(path = %path.display(), value, "cgroup write");
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(source) => Err(write_error(path, value, source)),
    }
}

fn write_error(path: &Path, value: &str, source: io::Error) -> CgroupError {
    let dir_missing = path.parent().is_some_and(|d| !d.exists());
    if dir_missing {
        return CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            hint: "the cgroup directory does not exist: create the cgroup first \
                   (Cgroup::create), or it was removed by someone else"
                .to_string(),
            source,
        };
    }
    // cgroupfs answers EACCES (not ENOENT) to O_CREAT on a file it does not have.
    let missing = source.kind() == io::ErrorKind::NotFound
        || (source.raw_os_error() == Some(libc::EACCES) && !path.exists());
    if missing {
        return CgroupError::MissingFile {
            path: path.to_path_buf(),
            value: value.to_string(),
            hint: missing_hint(file_name(path)),
        };
    }
    CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        hint: write_hint(file_name(path), &source),
        source,
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// What to do when a cgroup file the spec needs is not there.
pub(crate) fn missing_hint(name: &str) -> String {
    let s = if name.starts_with("memory.memsw.") {
        "swap accounting is disabled on this host; boot with swapaccount=1 \
         or drop linux.resources.memory.swap"
    } else if name == "memory.swap.max" {
        "swap accounting is not available on this host (kernel without \
         CONFIG_MEMCG_SWAP, or booted with swapaccount=0); enable it or drop \
         linux.resources.memory.swap"
    } else if name.starts_with("memory.kmem.") {
        "kernel memory accounting is not available on this kernel; drop \
         linux.resources.memory.kernelTCP"
    } else if name == "memory.swappiness" {
        "this kernel has no per-cgroup swappiness; drop linux.resources.memory.swappiness"
    } else if name.starts_with("cpu.cfs_") || name == "cpu.max" || name == "cpu.max.burst" {
        "CPU bandwidth control is not available (kernel without \
         CONFIG_CFS_BANDWIDTH, or the cpu controller is not enabled); drop \
         linux.resources.cpu.quota/period/burst"
    } else if name.starts_with("cpu.rt_") {
        "real-time group scheduling is not available (kernel without \
         CONFIG_RT_GROUP_SCHED); drop linux.resources.cpu.realtimeRuntime/realtimePeriod"
    } else if name == "cpu.idle" {
        "SCHED_IDLE for cgroups needs Linux 5.15+; drop linux.resources.cpu.idle"
    } else if name.starts_with("blkio.") && name.contains("weight") {
        "per-cgroup IO weight needs the BFQ (or legacy CFQ) IO scheduler on \
         the devices; select it (echo bfq > /sys/block/<dev>/queue/scheduler) \
         or drop linux.resources.blockIO.weight/weightDevice"
    } else if name.starts_with("io.") && name.contains("weight") {
        "IO weight needs the BFQ scheduler or the io.cost controller; enable \
         one or drop linux.resources.blockIO.weight/weightDevice"
    } else if name.starts_with("hugetlb.") {
        "this hugepage size is not supported by the kernel (see \
         /sys/kernel/mm/hugepages); fix linux.resources.hugepageLimits[].pageSize"
    } else if name == "cgroup.freeze" {
        "the cgroup v2 freezer needs Linux 5.2+"
    } else if name == "freezer.state" {
        "the freezer controller is not available in this cgroup"
    } else if name.starts_with("cpuset.") {
        "the cpuset controller is not available in this cgroup; drop \
         linux.resources.cpu.cpus/mems or enable the controller"
    } else if name.starts_with("pids.") {
        "the pids controller is not available in this cgroup; drop \
         linux.resources.pids or enable the controller"
    } else {
        "the kernel does not provide this cgroup file: the controller is not \
         enabled for this cgroup (cgroup v2: check the parent's \
         cgroup.subtree_control) or the kernel is too old; drop the setting \
         from linux.resources"
    };
    s.to_string()
}

fn write_hint(name: &str, err: &io::Error) -> String {
    let errno = err.raw_os_error().unwrap_or(0);
    let s = match errno {
        libc::EBUSY if name == "cgroup.subtree_control" => {
            "cgroup v2 forbids enabling controllers for children of a cgroup \
             that has processes of its own ('no internal processes' rule); \
             choose a cgroupsPath whose parent cgroup holds no processes \
             (inside a container: move its processes to a child cgroup first)"
        }
        libc::EBUSY if name.starts_with("memory.") => {
            "the new limit is below the cgroup's current usage and the kernel \
             could not reclaim enough memory; raise the limit"
        }
        libc::EBUSY if name.starts_with("cpu.") => {
            "the CPU bandwidth would exceed the parent's (or a child's) limit; \
             lower the quota or raise the parent's"
        }
        libc::EINVAL if name.starts_with("cpuset.") => {
            "the cpus/mems must be a valid list (e.g. 0-3,6) and a subset of \
             the parent cgroup's cpuset; fix linux.resources.cpu.cpus/mems"
        }
        libc::EINVAL if name.starts_with("memory.memsw.") => {
            "memory+swap must be >= the memory limit; fix linux.resources.memory.swap"
        }
        libc::EINVAL if name == "cgroup.procs" => {
            "the process cannot join this cgroup (cgroup v1 cpuset: empty \
             cpuset.cpus/mems; cgroup v2: the cgroup has children with \
             controllers enabled)"
        }
        libc::ESRCH if name == "cgroup.procs" => "the process has already exited",
        libc::EOPNOTSUPP if name == "cgroup.procs" => {
            "the target cgroup is threaded or otherwise cannot take processes"
        }
        libc::ENOTSUP | libc::EINVAL => {
            "the kernel rejected the value; check its format and range for this file"
        }
        libc::EACCES | libc::EPERM => {
            "permission denied: run as root, or use a cgroup delegated to this user"
        }
        libc::EROFS => "the cgroup filesystem is mounted read-only (running inside a container?)",
        _ => "check the value and that the controller is enabled for this cgroup",
    };
    s.to_string()
}

fn read_hint(path: &Path, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => {
            if path.parent().is_some_and(|d| !d.exists()) {
                "the cgroup directory does not exist (not created yet, or already removed)"
                    .to_string()
            } else {
                missing_hint(file_name(path))
            }
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: run as root, or use a cgroup delegated to this user".to_string()
        }
        _ => "check that the cgroup filesystem is mounted and readable".to_string(),
    }
}

/// `mkdir -p`.
pub(crate) fn mkdir_p(path: &Path) -> Result<(), CgroupError> {
    tracing::debug!(path = %path.display(), "cgroup mkdir");
    std::fs::create_dir_all(path).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::EROFS) => {
                "the cgroup filesystem is mounted read-only (running inside a \
                 container without a writable cgroupfs?)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "permission denied: run as root, or use a cgroup delegated to this user"
            }
            Some(libc::EEXIST) | Some(libc::ENOTDIR) => {
                "a file of that name is in the way; choose another cgroupsPath"
            }
            Some(libc::EAGAIN) => {
                "too many cgroups (cgroup.max.descendants / cgroup.max.depth reached)"
            }
            _ => "check that the cgroup filesystem is mounted and writable",
        };
        CgroupError::Mkdir {
            path: path.to_path_buf(),
            source,
            hint: hint.to_string(),
        }
    })
}

/// Subdirectories of `dir` (empty when `dir` does not exist).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                hint: read_hint(dir, &source),
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| CgroupError::Read {
            hint: "the cgroup directory changed while being listed; retry".to_string(),
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// How long a destroy keeps retrying EBUSY (processes still exiting).
pub(crate) const RMDIR_BUSY_TIMEOUT: Duration = Duration::from_millis(1000);

/// Remove `dir` and every cgroup below it, leaf first. Missing is fine.
///
/// On cgroupfs `rmdir` works on a directory full of (kernel) files; a cgroup
/// whose processes are still exiting answers EBUSY, retried until
/// `deadline` (at least one attempt is always made). On a fake tree `rmdir` answers ENOTEMPTY because
/// the files are real: those are unlinked and the rmdir retried (on cgroupfs
/// ENOTEMPTY does not happen, and unlinking there would fail harmlessly).
pub(crate) fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    for sub in subdirs(dir)? {
        remove_tree(&sub, deadline)?;
    }
    let start = Instant::now();
    let mut sleep = Duration::from_millis(1);
    let mut cleared_files = false;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => {
                tracing::debug!(path = %dir.display(), "cgroup rmdir");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST))
                    && !cleared_files =>
            {
                // Fake tree (or a child cgroup appeared meanwhile).
                cleared_files = true;
                for sub in subdirs(dir)? {
                    remove_tree(&sub, deadline)?;
                }
                remove_plain_files(dir);
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    let pids = read_procs(&dir.join("cgroup.procs")).unwrap_or_default();
                    return Err(CgroupError::Busy {
                        path: dir.to_path_buf(),
                        waited_ms: start.elapsed().as_millis() as u64,
                        pids,
                    });
                }
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                let hint = match source.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) => {
                        "permission denied: run as root, or use a cgroup delegated to this user"
                    }
                    Some(libc::EROFS) => "the cgroup filesystem is mounted read-only",
                    _ => "remove the directory by hand once its processes have exited",
                };
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                    hint: hint.to_string(),
                });
            }
        }
    }
}

fn remove_plain_files(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Parse a `cgroup.procs` file: one PID per line. Missing file => empty.
pub(crate) fn read_procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let Some(text) = read_opt(path)? else {
        return Ok(Vec::new());
    };
    let mut pids = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let pid = line.parse::<i32>().map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            content: line.to_string(),
            expected: "one PID per line",
        })?;
        pids.push(pid);
    }
    Ok(pids)
}

/// PIDs in `dir`/cgroup.procs and in every cgroup below it, sorted, deduplicated.
pub(crate) fn read_procs_recursive(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    collect_procs(dir, &mut pids)?;
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    out.extend(read_procs(&dir.join("cgroup.procs"))?);
    for sub in subdirs(dir)? {
        collect_procs(&sub, out)?;
    }
    Ok(())
}

/// Poll `check` until it returns `Some(true)` or `timeout` passes. Sleeps
/// start at 100 µs and double up to 10 ms. `refresh` is called every
/// ~100 ms while waiting (e.g. to re-write a freezer state).
pub(crate) fn wait_until<F, R>(
    timeout: Duration,
    mut check: F,
    mut refresh: R,
) -> Result<bool, CgroupError>
where
    F: FnMut() -> Result<bool, CgroupError>,
    R: FnMut() -> Result<(), CgroupError>,
{
    let start = Instant::now();
    let mut sleep = Duration::from_micros(100);
    let mut last_refresh = start;
    loop {
        if check()? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(10));
        if last_refresh.elapsed() >= Duration::from_millis(100) {
            refresh()?;
            last_refresh = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_opt_missing_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_opt(&t.path().join("nope")).unwrap(), None);
        assert!(read(&t.path().join("nope")).is_err());
    }

    #[test]
    fn write_into_missing_dir_names_path_and_fix() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("gone/memory.max");
        let err = write(&p, "100").unwrap_err().to_string();
        assert!(err.contains("gone/memory.max"), "{err}");
        assert!(err.contains("create the cgroup first"), "{err}");
    }

    #[test]
    fn missing_file_hints() {
        let e = CgroupError::MissingFile {
            path: "/sys/fs/cgroup/memory/husk/x/memory.memsw.limit_in_bytes".into(),
            value: "200".into(),
            hint: missing_hint("memory.memsw.limit_in_bytes"),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("memory.memsw.limit_in_bytes not present"),
            "{msg}"
        );
        assert!(msg.contains("swapaccount=1"), "{msg}");
        assert!(msg.contains("linux.resources.memory.swap"), "{msg}");
        assert!(missing_hint("cpu.cfs_quota_us").contains("CONFIG_CFS_BANDWIDTH"));
        assert!(missing_hint("memory.swap.max").contains("memory.swap"));
    }

    #[test]
    fn remove_tree_nested_fake_dirs() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a");
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
        std::fs::write(d.join("b/c/cgroup.procs"), "").unwrap();
        let deadline = Instant::now() + RMDIR_BUSY_TIMEOUT;
        remove_tree(&d, deadline).unwrap();
        assert!(!d.exists());
        // idempotent
        remove_tree(&d, deadline).unwrap();
    }

    #[test]
    fn procs_parsing_recursive() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("x/y")).unwrap();
        std::fs::write(d.join("cgroup.procs"), "10\n3\n").unwrap();
        std::fs::write(d.join("x/y/cgroup.procs"), "7\n3\n").unwrap();
        assert_eq!(read_procs_recursive(d).unwrap(), vec![3, 7, 10]);
        std::fs::write(d.join("x/cgroup.procs"), "bogus\n").unwrap();
        assert!(read_procs_recursive(d).is_err());
    }
}
