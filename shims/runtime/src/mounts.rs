//! Mount options and the plan of mounts a spec asks for.
//!
//! Turning `"options": ["nosuid", "mode=755", "rbind", "rprivate"]` into
//! mount(2) flags, propagation changes and filesystem data is pure and
//! unit-tested here; `rootfs` carries the plan out.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use crate::error::{Error, Result};

/// One mount from the spec, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Where, as seen inside the container.
    pub destination: PathBuf,
    pub kind: MountKind,
    /// mount(2) flags other than bind and propagation.
    pub flags: u64,
    /// Propagation changes applied after the mount (MS_SHARED, MS_REC|MS_SLAVE...).
    pub propagation: Vec<u64>,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Bind { source: PathBuf, recursive: bool },
    Cgroup,
    Filesystem { fstype: String, source: String },
}

impl MountPlan {
    pub fn is_readonly(&self) -> bool {
        self.flags & libc::MS_RDONLY as u64 != 0
    }
}

/// Options that set or clear mount(2) flags.
fn flag_option(opt: &str) -> Option<(bool, u64)> {
    let f = |x: libc::c_ulong| x as u64;
    Some(match opt {
        "ro" => (true, f(libc::MS_RDONLY)),
        "rw" => (false, f(libc::MS_RDONLY)),
        "nosuid" => (true, f(libc::MS_NOSUID)),
        "suid" => (false, f(libc::MS_NOSUID)),
        "nodev" => (true, f(libc::MS_NODEV)),
        "dev" => (false, f(libc::MS_NODEV)),
        "noexec" => (true, f(libc::MS_NOEXEC)),
        "exec" => (false, f(libc::MS_NOEXEC)),
        "sync" => (true, f(libc::MS_SYNCHRONOUS)),
        "async" => (false, f(libc::MS_SYNCHRONOUS)),
        "dirsync" => (true, f(libc::MS_DIRSYNC)),
        "remount" => (true, f(libc::MS_REMOUNT)),
        "mand" => (true, f(libc::MS_MANDLOCK)),
        "nomand" => (false, f(libc::MS_MANDLOCK)),
        "atime" => (false, f(libc::MS_NOATIME)),
        "noatime" => (true, f(libc::MS_NOATIME)),
        "diratime" => (false, f(libc::MS_NODIRATIME)),
        "nodiratime" => (true, f(libc::MS_NODIRATIME)),
        "relatime" => (true, f(libc::MS_RELATIME)),
        "norelatime" => (false, f(libc::MS_RELATIME)),
        "strictatime" => (true, f(libc::MS_STRICTATIME)),
        "nostrictatime" => (false, f(libc::MS_STRICTATIME)),
        "silent" => (true, f(libc::MS_SILENT)),
        "loud" => (false, f(libc::MS_SILENT)),
        "defaults" => (false, 0),
        _ => return None,
    })
}

fn propagation_option(opt: &str) -> Option<u64> {
    let rec = libc::MS_REC as u64;
    Some(match opt {
        "private" => libc::MS_PRIVATE as u64,
        "rprivate" => libc::MS_PRIVATE as u64 | rec,
        "shared" => libc::MS_SHARED as u64,
        "rshared" => libc::MS_SHARED as u64 | rec,
        "slave" => libc::MS_SLAVE as u64,
        "rslave" => libc::MS_SLAVE as u64 | rec,
        "unbindable" => libc::MS_UNBINDABLE as u64,
        "runbindable" => libc::MS_UNBINDABLE as u64 | rec,
        _ => return None,
    })
}

/// Decodes the `linux.rootfsPropagation` value.
pub fn rootfs_propagation(value: Option<&str>) -> Result<u64> {
    match value {
        None | Some("") => Ok(libc::MS_SLAVE as u64 | libc::MS_REC as u64),
        Some(v) => propagation_option(v).ok_or_else(|| {
            Error::invalid_spec(format!(
                "linux.rootfsPropagation {v:?} is not one of private, rprivate, shared, rshared, slave, rslave, unbindable, runbindable"
            ))
        }),
    }
}

/// Decodes one spec mount. `bundle` anchors relative bind sources.
pub fn plan(mount: &Mount, bundle: &Path) -> Result<MountPlan> {
    let mut flags = 0u64;
    let mut propagation = Vec::new();
    let mut data = Vec::new();
    let mut bind = None;
    for opt in mount.options().iter().flatten() {
        let opt = opt.as_str();
        if let Some((set, flag)) = flag_option(opt) {
            if set {
                flags |= flag;
            } else {
                flags &= !flag;
            }
        } else if let Some(p) = propagation_option(opt) {
            propagation.push(p);
        } else if opt == "bind" || opt == "rbind" {
            bind = Some(opt == "rbind");
        } else if opt == "idmap" || opt == "ridmap" {
            return Err(Error::Unsupported(format!(
                "mount {}: idmapped mounts ({opt}) are not supported by husk yet; drop the option",
                mount.destination().display()
            )));
        } else if opt == "tmpcopyup" {
            tracing::warn!(destination = %mount.destination().display(), "tmpcopyup is not supported; mounting an empty tmpfs");
        } else {
            data.push(opt);
        }
    }
    let typ = mount.typ().as_deref().unwrap_or("");
    let source = mount.source().clone().unwrap_or_default();
    let kind = if typ == "bind" || bind.is_some() {
        if source.as_os_str().is_empty() {
            return Err(Error::invalid_spec(format!(
                "bind mount {} has no source",
                mount.destination().display()
            )));
        }
        MountKind::Bind {
            source: if source.is_absolute() {
                source
            } else {
                bundle.join(source)
            },
            recursive: bind.unwrap_or(false),
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        MountKind::Cgroup
    } else if typ.is_empty() {
        return Err(Error::invalid_spec(format!(
            "mount {} has no type; give a filesystem type or the bind option",
            mount.destination().display()
        )));
    } else {
        MountKind::Filesystem {
            fstype: typ.to_string(),
            source: if source.as_os_str().is_empty() {
                typ.to_string()
            } else {
                source.to_string_lossy().into_owned()
            },
        }
    };
    Ok(MountPlan {
        destination: mount.destination().clone(),
        kind,
        flags,
        propagation,
        data: data.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn tmpfs_options_split_into_flags_and_data() {
        let m = mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        );
        let p = plan(&m, Path::new("/b")).unwrap();
        assert_eq!(p.flags, (libc::MS_NOSUID | libc::MS_STRICTATIME) as u64);
        assert_eq!(p.data, "mode=755,size=65536k");
        assert_eq!(
            p.kind,
            MountKind::Filesystem {
                fstype: "tmpfs".into(),
                source: "tmpfs".into()
            }
        );
    }

    #[test]
    fn bind_mounts_resolve_relative_sources_and_propagation() {
        let m = mount("/data", "none", "vol", &["rbind", "ro", "rprivate"]);
        let p = plan(&m, Path::new("/bundle")).unwrap();
        assert_eq!(
            p.kind,
            MountKind::Bind {
                source: "/bundle/vol".into(),
                recursive: true
            }
        );
        assert!(p.is_readonly());
        assert_eq!(
            p.propagation,
            vec![(libc::MS_PRIVATE | libc::MS_REC) as u64]
        );
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let m = mount("/x", "tmpfs", "tmpfs", &["ro", "rw"]);
        assert!(!plan(&m, Path::new("/")).unwrap().is_readonly());
    }

    #[test]
    fn cgroup_and_bad_mounts() {
        let m = mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"]);
        assert_eq!(plan(&m, Path::new("/")).unwrap().kind, MountKind::Cgroup);
        let m = mount("/x", "bind", "", &[]);
        assert!(plan(&m, Path::new("/")).is_err());
        let m = mount("/x", "tmpfs", "tmpfs", &["idmap"]);
        assert!(plan(&m, Path::new("/"))
            .unwrap_err()
            .to_string()
            .contains("idmap"));
    }

    #[test]
    fn rootfs_propagation_defaults_to_rslave() {
        assert_eq!(
            rootfs_propagation(None).unwrap(),
            (libc::MS_SLAVE | libc::MS_REC) as u64
        );
        assert_eq!(
            rootfs_propagation(Some("shared")).unwrap(),
            libc::MS_SHARED as u64
        );
        assert!(rootfs_propagation(Some("sideways")).is_err());
    }
}
