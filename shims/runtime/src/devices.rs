//! Device nodes in the container's /dev: the default set every container
//! gets, the spec's own, and the standard /dev links.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Context, Error, Result};
use crate::paths;
use crate::sys;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: libc::mode_t,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

fn char_dev(path: &str, major: u64, minor: u64) -> DeviceNode {
    DeviceNode {
        path: path.into(),
        kind: libc::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}

/// The devices runc and Docker give every container.
pub fn defaults() -> Vec<DeviceNode> {
    vec![
        char_dev("/dev/null", 1, 3),
        char_dev("/dev/zero", 1, 5),
        char_dev("/dev/full", 1, 7),
        char_dev("/dev/random", 1, 8),
        char_dev("/dev/urandom", 1, 9),
        char_dev("/dev/tty", 5, 0),
    ]
}

fn from_spec_device(d: &LinuxDevice) -> Result<DeviceNode> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::invalid_spec(format!(
                "device {}: type 'a' is only valid in cgroup rules, not linux.devices",
                d.path().display()
            )))
        }
    };
    if !d.path().starts_with("/dev") {
        return Err(Error::invalid_spec(format!(
            "device {} must live under /dev",
            d.path().display()
        )));
    }
    Ok(DeviceNode {
        path: d.path().clone(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Defaults plus the spec's devices; a spec device replaces a default at the
/// same path.
pub fn plan(spec_devices: &[LinuxDevice]) -> Result<Vec<DeviceNode>> {
    let mut all = defaults();
    for d in spec_devices {
        let node = from_spec_device(d)?;
        all.retain(|n| n.path != node.path);
        all.push(node);
    }
    Ok(all)
}

fn allow(
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(typ));
    rule.set_major(major);
    rule.set_minor(minor);
    rule.set_access(Some(access.to_string()));
    rule
}

/// The device cgroup rules to apply: the spec's own, then allow rules for
/// the devices every container needs (as runc adds them), then for the
/// nodes the runtime creates. Without these a spec that denies all (runc's
/// default) could not even create /dev/null.
pub fn cgroup_rules(
    spec_rules: &[LinuxDeviceCgroup],
    nodes: &[DeviceNode],
) -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    let mut rules = spec_rules.to_vec();
    rules.extend([
        allow(C, None, None, "m"),
        allow(B, None, None, "m"),
        allow(C, Some(5), Some(1), "rwm"),    // /dev/console
        allow(C, Some(136), None, "rwm"),     // /dev/pts/*
        allow(C, Some(5), Some(2), "rwm"),    // /dev/ptmx
        allow(C, Some(10), Some(200), "rwm"), // /dev/net/tun
    ]);
    for n in nodes {
        let typ = match n.kind {
            libc::S_IFBLK => B,
            libc::S_IFIFO => LinuxDeviceType::P,
            _ => C,
        };
        rules.push(allow(
            typ,
            Some(n.major as i64),
            Some(n.minor as i64),
            "rwm",
        ));
    }
    rules
}

/// Creates `node` under `rootfs`. In a user namespace mknod is forbidden, so
/// the host's node is bind-mounted onto an empty file instead.
pub fn create(rootfs: &Path, node: &DeviceNode, bind_from_host: bool) -> Result<()> {
    let target = paths::resolve_in_root(rootfs, &node.path)?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
    }
    if bind_from_host {
        paths::create_mount_point(&target, true)
            .context(|| format!("create mount point {}", target.display()))?;
        return sys::mount(
            Some(&node.path),
            &target,
            Some("bind"),
            libc::MS_BIND as u64,
            None,
        )
        .context(|| {
            format!(
                "bind host device {} into the container",
                node.path.display()
            )
        });
    }
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(|| format!("replace {}", target.display())),
    }
    sys::mknod(&target, node.kind | node.mode, node.major, node.minor)
        .context(|| format!("mknod {} ({}:{})", target.display(), node.major, node.minor))?;
    sys::lchown(&target, node.uid, node.gid).context(|| format!("chown {}", target.display()))
}

/// /dev/fd, /dev/stdin, /dev/stdout, /dev/stderr and /dev/ptmx.
pub fn create_links(rootfs: &Path) -> Result<()> {
    let links = [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("pts/ptmx", "dev/ptmx"),
    ];
    for (target, link) in links {
        let path = rootfs.join(link);
        if link == "dev/ptmx" {
            // Images often ship a ptmx node; the container must use its own devpts.
            let _ = std::fs::remove_file(&path);
        }
        match symlink(target, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context(|| format!("symlink {} -> {target}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceBuilder;

    #[test]
    fn spec_devices_replace_defaults_at_the_same_path() {
        let fuse = LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .build()
            .unwrap();
        let null = LinuxDeviceBuilder::default()
            .path("/dev/null")
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .file_mode(0o600u32)
            .build()
            .unwrap();
        let all = plan(&[fuse, null]).unwrap();
        assert_eq!(all.len(), defaults().len() + 1);
        assert_eq!(
            all.iter()
                .filter(|d| d.path == Path::new("/dev/null"))
                .count(),
            1
        );
        assert_eq!(
            all.iter()
                .find(|d| d.path == Path::new("/dev/null"))
                .unwrap()
                .mode,
            0o600
        );
    }

    #[test]
    fn cgroup_rules_allow_created_nodes_after_the_spec_rules() {
        let deny_all = {
            let mut r = LinuxDeviceCgroup::default();
            r.set_access(Some("rwm".into()));
            r
        };
        let rules = cgroup_rules(std::slice::from_ref(&deny_all), &defaults());
        assert_eq!(rules[0], deny_all);
        let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        assert!(text.contains(&"c 1:3 rwm".to_string()), "{text:?}");
        assert!(text.contains(&"c *:* m".to_string()), "{text:?}");
    }

    #[test]
    fn devices_outside_dev_are_refused() {
        let bad = LinuxDeviceBuilder::default()
            .path("/etc/sda")
            .typ(LinuxDeviceType::B)
            .major(8)
            .minor(0)
            .build()
            .unwrap();
        assert!(plan(&[bad]).unwrap_err().to_string().contains("under /dev"));
    }
}
