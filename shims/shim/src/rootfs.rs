//! `CreateTaskRequest.rootfs`: the snapshot mounts containerd hands the
//! shim (usually one overlay), mounted on `<bundle>/rootfs`.

// Mount flags are `c_ulong`: the casts to u64 keep 32-bit targets building.
#![allow(clippy::unnecessary_cast)]

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use husk_runtime::mounts::{self, MountKind};
use husk_runtime::sys;
use oci_spec::runtime::MountBuilder;

use crate::error::{Result, ShimError};

/// Mounts `mounts` in order on `<bundle>/rootfs`. Returns the mount point,
/// or `None` when there was nothing to mount (the bundle has its rootfs).
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(ShimError::io(format!("create {}", target.display())))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, &target) {
            if i > 0 {
                unmount(&target);
            }
            return Err(e);
        }
    }
    Ok(Some(target))
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let spec_mount = MountBuilder::default()
        .destination(target)
        .typ(m.type_.clone())
        .source(PathBuf::from(&m.source))
        .options(m.options.clone())
        .build()
        .map_err(|e| ShimError::InvalidArgument(format!("rootfs mount {m:?}: {e}")))?;
    let plan = mounts::plan(&spec_mount, Path::new("/"))
        .map_err(|e| ShimError::InvalidArgument(format!("rootfs mount {:?}: {e}", m.type_)))?;
    let fail = |e: std::io::Error| {
        ShimError::io(format!(
            "mount {} {} on {}",
            m.type_,
            m.source,
            target.display()
        ))(e)
    };
    match &plan.kind {
        MountKind::Bind { source, recursive } => {
            let mut flags = libc::MS_BIND as u64;
            if *recursive {
                flags |= libc::MS_REC as u64;
            }
            sys::mount(Some(source), target, None, flags, None).map_err(fail)?;
            if plan.is_readonly() {
                let ro = (libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY) as u64;
                sys::mount(None, target, None, ro, None).map_err(fail)?;
            }
        }
        MountKind::Filesystem { fstype, source } => {
            sys::mount(
                Some(Path::new(source)),
                target,
                Some(fstype),
                plan.flags,
                Some(&plan.data),
            )
            .map_err(fail)?;
        }
        MountKind::Cgroup => {
            return Err(ShimError::InvalidArgument(
                "a cgroup mount cannot be a container's rootfs".into(),
            ))
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (best effort, lazily).
pub fn unmount(target: &Path) {
    for _ in 0..16 {
        if sys::umount_detach(target).is_err() {
            break;
        }
    }
}
