//! Building the container's root filesystem inside its new mount
//! namespace: spec mounts, devices, pivot_root, masked and read-only paths.
//!
//! Runs in the container's init, before pivot_root for `prepare` and after
//! it for `finish`. Every destination is resolved with
//! [`paths::resolve_in_root`], so no symlink in the image can point a mount
//! at the host.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::{self, DeviceNode};
use crate::error::{Context, Error, Result};
use crate::mounts::{MountKind, MountPlan};
use crate::paths;
use crate::sys;

/// Everything the init needs to build the rootfs, computed by the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsPlan {
    pub rootfs: PathBuf,
    pub mounts: Vec<SerializedMount>,
    pub devices: Vec<SerializedDevice>,
    /// In a user namespace device nodes cannot be created, only bind-mounted.
    pub in_user_namespace: bool,
    pub cgroup: CgroupMountSource,
    /// Propagation of "/" during setup and, if shared etc., at the end.
    pub propagation: u64,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub readonly_root: bool,
    pub no_pivot: bool,
}

/// How `cgroup` mounts are satisfied: which host hierarchies exist and
/// where the container's cgroup lives in each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CgroupMountSource {
    /// (comma-joined controllers, the container's cgroup dir on the host);
    /// empty controllers means cgroup v2.
    pub hierarchies: Vec<(String, PathBuf)>,
    /// With its own cgroup namespace the container mounts fresh cgroupfs
    /// (rooted at its cgroup); without, it gets bind mounts.
    pub own_namespace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerializedMount {
    pub destination: PathBuf,
    pub kind: SerializedKind,
    pub flags: u64,
    pub propagation: Vec<u64>,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SerializedKind {
    Bind { source: PathBuf, recursive: bool },
    Cgroup,
    Filesystem { fstype: String, source: String },
}

impl From<MountPlan> for SerializedMount {
    fn from(m: MountPlan) -> Self {
        SerializedMount {
            destination: m.destination,
            kind: match m.kind {
                MountKind::Bind { source, recursive } => SerializedKind::Bind { source, recursive },
                MountKind::Cgroup => SerializedKind::Cgroup,
                MountKind::Filesystem { fstype, source } => {
                    SerializedKind::Filesystem { fstype, source }
                }
            },
            flags: m.flags,
            propagation: m.propagation,
            data: m.data,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerializedDevice {
    pub path: PathBuf,
    pub kind: u32,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl From<DeviceNode> for SerializedDevice {
    fn from(d: DeviceNode) -> Self {
        SerializedDevice {
            path: d.path,
            kind: d.kind,
            major: d.major,
            minor: d.minor,
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
        }
    }
}

impl From<&SerializedDevice> for DeviceNode {
    fn from(d: &SerializedDevice) -> Self {
        DeviceNode {
            path: d.path.clone(),
            kind: d.kind,
            major: d.major,
            minor: d.minor,
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
        }
    }
}

const MS_BIND: u64 = libc::MS_BIND as u64;
const MS_REC: u64 = libc::MS_REC as u64;
const MS_REMOUNT: u64 = libc::MS_REMOUNT as u64;
const MS_RDONLY: u64 = libc::MS_RDONLY as u64;

/// Flags that, on a bind mount, only take effect through a remount.
const BIND_REMOUNT_FLAGS: u64 = (libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME) as u64;

fn mount_err<'a>(what: &str, dest: &'a Path) -> impl FnOnce() -> String + 'a {
    let what = what.to_string();
    move || format!("{what} on {}", dest.display())
}

fn source_err(source: &Path, dest: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!(
        "bind mount source {} for {}",
        source.display(),
        dest.display()
    );
    move |e| Error::Io { context, source: e }
}

/// Bind-mount sources as detached mount trees, one per mount of `plan`
/// (`None` for the others), opened by the caller while it is still host
/// root in the host's mount namespace, for [`prepare`] to attach.
///
/// In a user namespace the init is an unprivileged host uid: looking a
/// source up by path there needs search permission on every directory
/// above it (containerd keeps a pod's /dev/shm, hosts and resolv.conf
/// under 0700 state directories). Opening them before, as runc does with
/// its mount-source descriptors, leaves the host's permissions alone.
pub fn open_bind_sources(plan: &RootfsPlan) -> Result<Vec<Option<OwnedFd>>> {
    plan.mounts
        .iter()
        .map(|m| match &m.kind {
            SerializedKind::Bind { source, recursive } => sys::clone_mount_tree(source, *recursive)
                .map(Some)
                .map_err(source_err(source, &m.destination)),
            _ => Ok(None),
        })
        .collect()
}

/// Everything before pivot_root: propagation, the rootfs bind, the spec's
/// mounts, and the devices. `sources`: from [`open_bind_sources`], or
/// empty to look bind sources up by path.
pub fn prepare(plan: &RootfsPlan, sources: &[Option<OwnedFd>]) -> Result<()> {
    // Nothing mounted from here on may propagate back to the host.
    let setup_propagation = if plan.propagation & (libc::MS_SHARED as u64) != 0 {
        MS_REC | libc::MS_SLAVE as u64
    } else {
        plan.propagation | MS_REC
    };
    sys::mount(None, Path::new("/"), None, setup_propagation, None)
        .context(|| "make / a slave mount for the container".into())?;
    sys::mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        Some("bind"),
        MS_BIND | MS_REC,
        None,
    )
    .context(mount_err("bind the rootfs onto itself", &plan.rootfs))?;

    for (i, m) in plan.mounts.iter().enumerate() {
        let tree = sources.get(i).and_then(Option::as_ref).map(|t| t.as_fd());
        mount_one(plan, m, tree)?;
    }
    for d in &plan.devices {
        devices::create(&plan.rootfs, &DeviceNode::from(d), plan.in_user_namespace)?;
    }
    devices::create_links(&plan.rootfs)
}

fn mount_one(plan: &RootfsPlan, m: &SerializedMount, tree: Option<BorrowedFd<'_>>) -> Result<()> {
    let dest = paths::resolve_in_root(&plan.rootfs, &m.destination)?;
    match &m.kind {
        SerializedKind::Bind { source, recursive } => {
            let is_dir = match tree {
                Some(t) => sys::is_dir_fd(t),
                None => std::fs::metadata(source).map(|m| m.is_dir()),
            }
            .map_err(source_err(source, &m.destination))?;
            paths::create_mount_point(&dest, !is_dir)
                .context(mount_err("create mount point", &dest))?;
            let rec = if *recursive { MS_REC } else { 0 };
            let bound = match tree {
                Some(t) => sys::move_mount_to(t, &dest),
                None => sys::mount(Some(source), &dest, Some("bind"), MS_BIND | rec, None),
            };
            bound
                .context(|| format!("bind {} to {}", source.display(), m.destination.display()))?;
            remount_bind(plan, &dest, m.flags | rec)?;
        }
        SerializedKind::Cgroup => mount_cgroup(plan, m, &dest)?,
        SerializedKind::Filesystem { fstype, source } => {
            paths::create_mount_point(&dest, false)
                .context(mount_err("create mount point", &dest))?;
            let r = sys::mount(
                Some(Path::new(source)),
                &dest,
                Some(fstype),
                m.flags,
                Some(&m.data),
            );
            match r {
                Err(e)
                    if fstype == "sysfs"
                        && plan.in_user_namespace
                        && e.raw_os_error() == Some(libc::EPERM) =>
                {
                    // sysfs needs a network namespace owned by our user
                    // namespace; without one, show the host's read-only.
                    sys::mount(
                        Some(Path::new("/sys")),
                        &dest,
                        Some("bind"),
                        MS_BIND | MS_REC,
                        None,
                    )
                    .context(mount_err("bind /sys", &dest))?;
                    remount_bind(plan, &dest, m.flags | MS_REC | MS_RDONLY)?;
                }
                r => r.context(|| {
                    format!(
                        "mount {fstype} on {} (options {:?})",
                        m.destination.display(),
                        m.data
                    )
                })?,
            }
        }
    }
    for p in &m.propagation {
        sys::mount(None, &dest, None, *p, None)
            .context(mount_err("set mount propagation", &dest))?;
    }
    Ok(())
}

/// Applies ro/nosuid/... to a bind mount, which ignores them at first.
fn remount_bind(plan: &RootfsPlan, dest: &Path, flags: u64) -> Result<()> {
    let wanted = flags & BIND_REMOUNT_FLAGS;
    if wanted == 0 {
        return Ok(());
    }
    let locked = if plan.in_user_namespace {
        sys::locked_mount_flags(dest).unwrap_or(0)
    } else {
        0
    };
    sys::mount(
        None,
        dest,
        None,
        MS_BIND | MS_REMOUNT | (flags & MS_REC) | wanted | locked,
        None,
    )
    .context(mount_err("remount bind mount with its options", dest))
}

fn mount_cgroup(plan: &RootfsPlan, m: &SerializedMount, dest: &Path) -> Result<()> {
    paths::create_mount_point(dest, false).context(mount_err("create mount point", dest))?;
    let src = &plan.cgroup;
    let fresh = src.own_namespace;
    let flags = m.flags & !MS_RDONLY;
    let v2 = src.hierarchies.len() == 1 && src.hierarchies[0].0.is_empty();
    if v2 {
        let dir = &src.hierarchies[0].1;
        if fresh {
            sys::mount(
                Some(Path::new("cgroup2")),
                dest,
                Some("cgroup2"),
                m.flags,
                None,
            )
            .context(mount_err("mount cgroup2", dest))?;
        } else {
            sys::mount(Some(dir), dest, Some("bind"), MS_BIND | MS_REC, None)
                .context(mount_err("bind the container's cgroup", dest))?;
            remount_bind(plan, dest, m.flags)?;
        }
        return Ok(());
    }
    // cgroup v1 or hybrid: a tmpfs holding one directory per hierarchy.
    sys::mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        flags | (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as u64,
        Some("mode=755"),
    )
    .context(mount_err("mount tmpfs for cgroups", dest))?;
    for (controllers, dir) in &src.hierarchies {
        let (name, fstype, options) = if controllers.is_empty() {
            ("unified".to_string(), "cgroup2", String::new())
        } else if let Some(n) = controllers.strip_prefix("name=") {
            (n.to_string(), "cgroup", format!("none,name={n}"))
        } else {
            (controllers.clone(), "cgroup", controllers.clone())
        };
        let sub = dest.join(&name);
        std::fs::create_dir_all(&sub).context(mount_err("create", &sub))?;
        if fresh {
            sys::mount(
                Some(Path::new("cgroup")),
                &sub,
                Some(fstype),
                m.flags,
                Some(&options),
            )
            .context(|| format!("mount cgroup hierarchy {name} on {}", sub.display()))?;
        } else {
            sys::mount(Some(dir), &sub, Some("bind"), MS_BIND | MS_REC, None)
                .context(mount_err("bind the container's cgroup", &sub))?;
            remount_bind(plan, &sub, m.flags)?;
        }
        // cpu,cpuacct is also reachable as cpu and cpuacct.
        if controllers.contains(',') {
            for c in controllers.split(',') {
                let _ = std::os::unix::fs::symlink(&name, dest.join(c));
            }
        }
    }
    if m.flags & MS_RDONLY != 0 {
        sys::mount(
            None,
            dest,
            None,
            MS_REMOUNT
                | MS_RDONLY
                | flags
                | (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as u64,
            Some("mode=755"),
        )
        .context(mount_err("make the cgroup tmpfs read-only", dest))?;
    }
    Ok(())
}

/// Switches the root to the rootfs.
pub fn pivot(plan: &RootfsPlan) -> Result<()> {
    if plan.no_pivot {
        sys::chdir(&plan.rootfs).context(|| format!("chdir {}", plan.rootfs.display()))?;
        sys::mount(
            Some(&plan.rootfs),
            Path::new("/"),
            None,
            libc::MS_MOVE as u64,
            None,
        )
        .context(|| "move the rootfs to /".into())?;
        return sys::chroot(Path::new(".")).context(|| "chroot into the rootfs".into());
    }
    sys::pivot_root(&plan.rootfs).context(|| format!("pivot_root to {}", plan.rootfs.display()))
}

/// Everything after pivot_root: masked and read-only paths, a read-only
/// root, and the final propagation of "/".
pub fn finish(plan: &RootfsPlan) -> Result<()> {
    for p in &plan.masked_paths {
        mask(p)?;
    }
    for p in &plan.readonly_paths {
        make_readonly(p)?;
    }
    if plan.readonly_root {
        let locked = sys::locked_mount_flags(Path::new("/")).unwrap_or(0);
        sys::mount(
            None,
            Path::new("/"),
            None,
            MS_BIND | MS_REMOUNT | MS_RDONLY | locked,
            None,
        )
        .context(|| "make the root filesystem read-only".into())?;
    }
    if plan.propagation & (libc::MS_SHARED as u64) != 0 {
        sys::mount(None, Path::new("/"), None, plan.propagation, None)
            .context(|| "set rootfs propagation".into())?;
    }
    Ok(())
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a
/// directory. Paths that do not exist need no masking.
fn mask(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(|| format!("stat masked path {}", path.display())),
    };
    if meta.is_dir() {
        sys::mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MS_RDONLY,
            None,
        )
    } else {
        sys::mount(
            Some(Path::new("/dev/null")),
            path,
            Some("bind"),
            MS_BIND,
            None,
        )
    }
    .context(|| format!("mask {}", path.display()))
}

fn make_readonly(path: &Path) -> Result<()> {
    match sys::mount(Some(path), path, Some("bind"), MS_BIND | MS_REC, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        r => r.context(|| format!("bind read-only path {}", path.display()))?,
    }
    let locked = sys::locked_mount_flags(path).unwrap_or(0);
    sys::mount(
        None,
        path,
        None,
        MS_BIND | MS_REMOUNT | MS_REC | MS_RDONLY | locked,
        None,
    )
    .context(|| format!("make {} read-only", path.display()))
}

/// Bind-mounts the console pty over /dev/console.
pub fn mount_console(slave_path: &Path) -> Result<()> {
    let console = Path::new("/dev/console");
    paths::create_mount_point(console, true).context(|| "create /dev/console".into())?;
    sys::mount(Some(slave_path), console, Some("bind"), MS_BIND, None)
        .context(|| "bind the pty to /dev/console".into())
}
