//! Refusing bundles whose paths lead to the host by indirection: a rootfs
//! or bind-mount source that resolves through a symlink, and namespace
//! paths that are the host's own namespaces.
//!
//! A symlink planted where an operator expects a volume directory (or in
//! an unpacked bundle) would have the runtime mount whatever it points at,
//! /etc or /, into an untrusted container. The runtime itself resolves
//! mount *destinations* inside the rootfs; this is about *sources*, which
//! live on the host. A hardened container takes only real paths: the error
//! names the symlink and its target, so an operator who means it can give
//! the resolved path instead.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{Error, Result};

/// Checks the rootfs, every bind-mount source and every namespace path of
/// `spec`, whose bundle is `bundle`.
pub fn check_bundle(spec: &Spec, bundle: &Path) -> Result<()> {
    let bundle = std::path::absolute(bundle).map_err(|e| Error::Io {
        context: format!("resolve bundle path {}", bundle.display()),
        source: e,
    })?;
    if let Some(root) = spec.root() {
        let (base, rel) = split(&bundle, root.path());
        if let Some((link, target)) = first_symlink(&base, &rel)? {
            return Err(Error::Refused(format!(
                "root.path {} resolves through the symlink {} -> {} to a host path; \
                 hardened containers refuse symlinked root filesystems: point root.path at the real directory",
                root.path().display(),
                link.display(),
                target.display()
            )));
        }
    }
    for m in spec.mounts().iter().flatten() {
        let Some(source) = m.source().as_ref().filter(|_| is_bind(m)) else {
            continue;
        };
        let (base, rel) = split(&bundle, source);
        if let Some((link, target)) = first_symlink(&base, &rel)? {
            return Err(Error::Refused(format!(
                "mount {}: source {} resolves through the symlink {} -> {} to a host path; \
                 hardened containers refuse symlinked mount sources: give the resolved path if that is really what should be mounted",
                m.destination().display(),
                source.display(),
                link.display(),
                target.display()
            )));
        }
    }
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let Some(path) = ns.path() else { continue };
        if is_host_namespace(ns.typ(), path) {
            return Err(Error::Refused(format!(
                "linux.namespaces: {} is the host's own {} namespace; a hardened container gets a private one: remove the path",
                path.display(),
                ns.typ()
            )));
        }
    }
    Ok(())
}

/// Creates, as the caller (host root), the mount points of `spec` that
/// the rootfs lacks. In a user namespace the container's root is an
/// unprivileged host uid that cannot create directories in an image owned
/// by host root, so they must exist before it starts. Mount points inside
/// another mount of the spec (/dev/pts in /dev) are left to the container,
/// which owns those file systems. Returns what was created.
pub fn create_mount_points(spec: &Spec, bundle: &Path) -> Result<Vec<PathBuf>> {
    let rootfs = match crate::spec::rootfs(spec, bundle) {
        Ok(r) => r,
        // The runtime reports a missing rootfs with its own message.
        Err(_) => return Ok(Vec::new()),
    };
    let mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    let mut created = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let dest = m.destination();
        let nested = mounts[..i].iter().any(|earlier| {
            dest != earlier.destination() && dest.starts_with(earlier.destination())
        });
        if nested {
            continue;
        }
        let host = crate::paths::resolve_in_root(&rootfs, dest)
            .map_err(|e| Error::Refused(e.to_string()))?;
        if std::fs::symlink_metadata(&host).is_ok() {
            continue;
        }
        let file = m
            .source()
            .as_ref()
            .filter(|_| is_bind(m))
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|meta| !meta.is_dir());
        crate::paths::create_mount_point(&host, file).map_err(|e| Error::Io {
            context: format!(
                "create the mount point {} in the rootfs {} (the container's root cannot, in its user namespace)",
                dest.display(),
                rootfs.display()
            ),
            source: e,
        })?;
        created.push(dest.clone());
    }
    Ok(created)
}

/// Lets the container's root (host `gid` of its user namespace) reach the
/// rootfs by path: the init binds it and pivots into it from inside the
/// user namespace, where host root's directory permissions apply to it as
/// to any other user. The bundle directory gets group `gid` with search
/// permission (containerd 1.7 does the same for user namespaces); an
/// ancestor without search permission for others gets it (0711-style, as
/// containerd's own state directories are). Bind-mount sources need
/// nothing: the runtime opens them while still host root
/// (`rootfs::open_bind_sources`). Returns the directories changed.
pub fn make_rootfs_reachable(spec: &Spec, bundle: &Path, gid: u32) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rootfs) = crate::spec::rootfs(spec, bundle) else {
        return Ok(Vec::new());
    };
    let bundle = std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_path_buf());
    let mut changed = Vec::new();
    let io = |what: String| {
        move |e| Error::Io {
            context: what,
            source: e,
        }
    };
    for dir in rootfs.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(io(format!("inspect {}", dir.display())))?;
        let mode = meta.permissions().mode();
        if dir == bundle {
            if meta.gid() != gid || mode & 0o010 == 0 {
                std::os::unix::fs::chown(dir, None, Some(gid))
                    .map_err(io(format!("give {} to group {gid}", dir.display())))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o010))
                    .map_err(io(format!("chmod g+x {}", dir.display())))?;
                changed.push(dir.to_path_buf());
            }
        } else if mode & 0o001 == 0 && (mode & 0o010 == 0 || meta.gid() != gid) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(io(format!("chmod o+x {}", dir.display())))?;
            changed.push(dir.to_path_buf());
        }
    }
    Ok(changed)
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// (where the walk starts, the components to walk): absolute paths walk
/// from "/", relative ones from the bundle (whose own path is the
/// caller's, trusted).
fn split(bundle: &Path, path: &Path) -> (PathBuf, Vec<PathBuf>) {
    let (base, path) = if path.is_absolute() {
        (PathBuf::from("/"), path)
    } else {
        (bundle.to_path_buf(), path)
    };
    let rel = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    (base, rel)
}

/// The first component under `base` that is a symlink, with its target.
/// A missing component ends the walk (the runtime reports missing paths).
fn first_symlink(base: &Path, rel: &[PathBuf]) -> Result<Option<(PathBuf, PathBuf)>> {
    let mut at = base.to_path_buf();
    for c in rel {
        at.push(c);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    context: format!("inspect {}", at.display()),
                    source: e,
                })
            }
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&at).unwrap_or_default();
            return Ok(Some((at, target)));
        }
    }
    Ok(None)
}

/// Whether `path` is the namespace of type `t` the caller (the shim, in
/// the host's namespaces) is in.
fn is_host_namespace(t: LinuxNamespaceType, path: &Path) -> bool {
    let own = Path::new("/proc/self/ns").join(crate::namespaces::proc_name(t));
    match (std::fs::metadata(path), std::fs::metadata(own)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn spec(root: &str, mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": root},
            "mounts": mounts,
        }))
        .unwrap()
    }

    #[test]
    fn real_paths_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        std::fs::create_dir_all(dir.path().join("vol")).unwrap();
        let vol = dir.path().join("vol");
        let s = spec(
            "rootfs",
            serde_json::json!([
                {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind"]},
                {"destination": "/proc", "type": "proc", "source": "proc"}
            ]),
        );
        check_bundle(&s, dir.path()).unwrap();
    }

    #[test]
    fn a_symlinked_rootfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/", dir.path().join("rootfs")).unwrap();
        let err = check_bundle(&spec("rootfs", serde_json::json!([])), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root.path rootfs") && err.contains("-> /"),
            "{err}"
        );
    }

    #[test]
    fn a_mount_source_through_a_symlinked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        symlink("/etc", dir.path().join("volumes")).unwrap();
        let source = dir.path().join("volumes/passwd");
        let s = spec(
            "rootfs",
            serde_json::json!([
                {"destination": "/data", "source": source, "options": ["rbind", "ro"]}
            ]),
        );
        let err = check_bundle(&s, dir.path()).unwrap_err().to_string();
        assert!(err.contains("mount /data"), "{err}");
        assert!(err.contains("-> /etc"), "{err}");
        assert!(err.contains("resolved path"), "{err}");
        // Not a bind mount: the source is not a host path.
        let s = spec(
            "rootfs",
            serde_json::json!([{"destination": "/data", "type": "tmpfs", "source": source}]),
        );
        check_bundle(&s, dir.path()).unwrap();
    }

    #[test]
    fn missing_mount_points_are_created_except_inside_other_mounts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs/proc")).unwrap();
        std::fs::write(dir.path().join("hostfile"), "x").unwrap();
        // An image symlink is followed inside the rootfs, never out of it.
        symlink("/var/tmp", dir.path().join("rootfs/tmp")).unwrap();
        let s = spec(
            "rootfs",
            serde_json::json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/etc/hostname", "type": "bind", "source": dir.path().join("hostfile"), "options": ["rbind"]}
            ]),
        );
        let created = create_mount_points(&s, dir.path()).unwrap();
        assert_eq!(
            created,
            ["/dev", "/tmp", "/etc/hostname"].map(PathBuf::from)
        );
        let root = dir.path().join("rootfs");
        assert!(root.join("dev").is_dir());
        assert!(!root.join("dev/pts").exists());
        assert!(root.join("var/tmp").is_dir());
        assert!(root.join("etc/hostname").is_file());
        // Idempotent.
        assert!(create_mount_points(&s, dir.path()).unwrap().is_empty());
    }

    #[test]
    fn the_rootfs_path_becomes_reachable_for_the_container_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("state/bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        for d in [dir.path().join("state"), bundle.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let gid = nix::unistd::getgid().as_raw();
        let changed =
            make_rootfs_reachable(&spec("rootfs", serde_json::json!([])), &bundle, gid).unwrap();
        assert!(changed.contains(&bundle), "{changed:?}");
        assert!(changed.contains(&dir.path().join("state")), "{changed:?}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&bundle), 0o710);
        assert_eq!(mode(&dir.path().join("state")), 0o701);
        // Nothing left to change.
        assert!(
            make_rootfs_reachable(&spec("rootfs", serde_json::json!([])), &bundle, gid)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_host_namespaces_are_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        let mut s = spec("rootfs", serde_json::json!([]));
        s.set_linux(Some(
            serde_json::from_value(serde_json::json!({
                "namespaces": [{"type": "network", "path": "/proc/self/ns/net"}]
            }))
            .unwrap(),
        ));
        let err = check_bundle(&s, dir.path()).unwrap_err().to_string();
        assert!(err.contains("host's own net namespace"), "{err}");
    }
}
