//! Stacking snapshots with overlayfs: the `lowerdir=` list of an image and
//! the mount of a container's writable rootfs.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::error::{ImageError, Result};

/// A mounted rootfs (see [`mount_overlay`]). It stays mounted until
/// [`unmount`]: the mount must outlive the process that made it (a daemon
/// restart keeps containers running).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsMount {
    /// Where the overlay is mounted.
    pub target: PathBuf,
    /// The snapshot dirs, top first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

/// The overlayfs option string for `lowers` (top first), `upper` and
/// `work`. Paths may not contain `:` or `,` (overlayfs separators) and the
/// whole string must fit in a page.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    let check = |p: &Path| -> Result<String> {
        let s = p.to_str().ok_or_else(|| bad_path(p, "is not UTF-8"))?;
        if s.contains([':', ',', '\\']) {
            return Err(bad_path(
                p,
                "contains ':', ',' or '\\', which overlayfs options cannot hold",
            ));
        }
        Ok(s.to_string())
    };
    if lowers.is_empty() {
        return Err(bad_path(
            Path::new(""),
            "an overlay needs at least one lower dir",
        ));
    }
    let lower = lowers
        .iter()
        .map(|p| check(p))
        .collect::<Result<Vec<_>>>()?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        check(upper)?,
        check(work)?
    );
    if opts.len() >= 4096 {
        return Err(bad_path(
            upper,
            "the overlay options exceed a page (too many layers for absolute paths)",
        ));
    }
    Ok(opts)
}

fn bad_path(p: &Path, why: &str) -> ImageError {
    ImageError::io(
        format!("overlay path {}", p.display()),
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    )
}

/// Whether the writes to an overlay's upper dir must reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpperSync {
    /// The upper filesystem is synced as usual: on fsync calls inside the
    /// container, and on unmount (which syncs the whole upper filesystem,
    /// everyone's dirty data included).
    #[default]
    Synced,
    /// overlayfs `volatile` (Linux 5.10+): no sync of the upper filesystem
    /// at all. For a container whose writable layer is thrown away when
    /// it exits (`run --rm`): a host crash loses nothing that would have
    /// been kept. Where the kernel refuses the option, the mount falls
    /// back to [`UpperSync::Synced`].
    Volatile,
}

/// Mounts an overlay of `lowers` (top first) with `upper` and `work` (both
/// created if missing, on one filesystem) at `target`. Needs root.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    sync: UpperSync,
) -> Result<RootfsMount> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)
            .map_err(|e| ImageError::io(format!("creating {}", d.display()), e))?;
    }
    let opts = overlay_options(lowers, upper, work)?;
    let mount_with = |opts: &str| {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts),
        )
    };
    let mounted = match sync {
        UpperSync::Synced => mount_with(&opts),
        UpperSync::Volatile => match mount_with(&format!("{opts},volatile")) {
            // Kernels before 5.10 do not know `volatile`.
            Err(nix::Error::EINVAL) => {
                tracing::debug!(target = %target.display(), "overlayfs refused volatile; mounting synced");
                mount_with(&opts)
            }
            r => r,
        },
    };
    mounted.map_err(|e| ImageError::Mount {
        context: format!("mounting overlay at {}", target.display()),
        source: e,
        hint: "mounting needs root (CAP_SYS_ADMIN) and upper/work dirs on one filesystem \
               that supports overlayfs upper dirs (not overlayfs itself)"
            .into(),
    })?;
    tracing::debug!(target = %target.display(), layers = lowers.len(), "overlay mounted");
    Ok(RootfsMount {
        target: target.to_path_buf(),
        lowerdirs: lowers.to_vec(),
        upperdir: upper.to_path_buf(),
        workdir: work.to_path_buf(),
    })
}

/// Unmounts the overlay at `target` (lazily if busy). Not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).map_err(|e| ImageError::Mount {
                context: format!("unmounting {}", target.display()),
                source: e,
                hint: "stop the processes using the rootfs, then try again".into(),
            })
        }
        Err(e) => Err(ImageError::Mount {
            context: format!("unmounting {}", target.display()),
            source: e,
            hint: "unmounting needs root".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowers_top_first() {
        let o = overlay_options(
            &[PathBuf::from("/s/b/fs"), PathBuf::from("/s/a/fs")],
            Path::new("/c/upper"),
            Path::new("/c/work"),
        )
        .unwrap();
        assert_eq!(
            o,
            "lowerdir=/s/b/fs:/s/a/fs,upperdir=/c/upper,workdir=/c/work"
        );
        assert!(
            overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err()
        );
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
    }
}
