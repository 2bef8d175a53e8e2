//! Resolving container paths on the host before pivot_root, without ever
//! letting a symlink in the image point the runtime at a host path.
//!
//! Absolute symlinks are re-rooted at the rootfs (what they mean inside the
//! container); a relative symlink that climbs above the rootfs is hostile
//! and refused.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (as seen inside the container) to a host path under
/// `root`. Components that do not exist yet are kept as given, so the result
/// can be created.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    // Pending components, consumed from the back; each remembers whether it
    // came from a symlink target (then climbing above the root is an escape).
    let mut pending: Vec<(std::ffi::OsString, bool)> = components(path, false);
    pending.reverse();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some((comp, from_link)) = pending.pop() {
        if comp == ".." {
            if resolved.pop().is_none() && from_link {
                return Err(Error::invalid_spec(format!(
                    "{} resolves through a symlink to a path outside the container's rootfs {}",
                    path.display(),
                    root.display()
                )));
            }
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&comp);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::invalid_spec(format!(
                        "{}: too many levels of symbolic links under {}",
                        path.display(),
                        root.display()
                    )));
                }
                let target = std::fs::read_link(&candidate).map_err(|e| Error::Io {
                    context: format!("read symlink {}", candidate.display()),
                    source: e,
                })?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut expanded = components(&target, true);
                expanded.reverse();
                pending.extend(expanded);
            }
            _ => resolved.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

fn components(path: &Path, from_link: bool) -> Vec<(std::ffi::OsString, bool)> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some((n.to_os_string(), from_link)),
            Component::ParentDir => Some(("..".into(), from_link)),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Creates `path` and its missing parents as directories, or as an empty
/// file if `file` is set. Existing entries are left alone.
pub fn create_mount_point(path: &Path, file: bool) -> std::io::Result<()> {
    if file {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
        }
        Ok(())
    } else {
        std::fs::create_dir_all(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_stay_under_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            resolve_in_root(r, Path::new("/a/b")).unwrap(),
            r.join("a/b")
        );
        // ".." in the requested path clamps at the container's root, as the kernel does.
        assert_eq!(
            resolve_in_root(r, Path::new("/../../etc")).unwrap(),
            r.join("etc")
        );
    }

    #[test]
    fn absolute_symlinks_are_rerooted() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/var/run/x")).unwrap(),
            r.join("run/x")
        );
    }

    #[test]
    fn relative_symlinks_inside_root_resolve() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/lib/x")).unwrap(),
            r.join("usr/lib/x")
        );
    }

    #[test]
    fn relative_symlink_escaping_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("../../../../../../tmp", r.join("evil")).unwrap();
        let err = resolve_in_root(r, Path::new("/evil/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the container's rootfs"), "{err}");
    }

    #[test]
    fn symlink_loops_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        let err = resolve_in_root(r, Path::new("/a")).unwrap_err().to_string();
        assert!(err.contains("too many levels"), "{err}");
    }
}
