//! The OCI runtime spec (`config.json`) of a container: the image config's
//! defaults (Entrypoint, Cmd, Env, WorkingDir, User) overridden by the
//! `husk run` flags, on a default like docker's (capabilities, mounts,
//! masked paths, namespaces).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::api::CreateParams;
use crate::error::{CoreError, Result};
use crate::images::store::{ImageInspect, InspectConfig};

/// The annotations that tell policy plugins which image a container runs
/// (read by husk's shim, see plugins/host/src/view.rs).
pub const IMAGE_REF_ANNOTATION: &str = "io.husk.image.ref";
pub const IMAGE_DIGEST_ANNOTATION: &str = "io.husk.image.digest";

/// docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A bind mount into the container (from a `-v`).
#[derive(Clone, Debug)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// The process args: entrypoint + cmd, each from the flags or the image.
pub fn args(image: &InspectConfig, p: &CreateParams) -> Result<Vec<String>> {
    let entry = p
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = if !p.cmd.is_empty() {
        p.cmd.clone()
    } else if p.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(CoreError::InvalidArgument(format!(
            "no command: the image {} has no Entrypoint or Cmd; give one after the image name",
            p.image
        )));
    }
    Ok(args)
}

/// The environment: the image's, then the flags' (`K=V`, a key given
/// again replaces the earlier value), with a default PATH.
pub fn env(image: &InspectConfig, p: &CreateParams) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for kv in image.env.iter().flatten().chain(p.env.iter()) {
        let Some((k, _)) = kv.split_once('=') else {
            return Err(CoreError::InvalidArgument(format!(
                "invalid environment variable {kv:?}: use KEY=VALUE"
            )));
        };
        if k.is_empty() {
            return Err(CoreError::InvalidArgument(format!(
                "invalid environment variable {kv:?}: the key is empty"
            )));
        }
        out.retain(|e| e.split_once('=').map(|x| x.0) != Some(k));
        out.push(kv.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    Ok(out)
}

fn lookup(file: &Path, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) && f.len() >= 3 {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves `user[:group]` (names or numbers) against the rootfs's
/// /etc/passwd and /etc/group: (uid, gid).
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, mut gid) = if let Ok(uid) = u.parse::<u32>() {
        (
            uid,
            lookup_uid_gid(rootfs, uid).unwrap_or(if g.is_none() { 0 } else { uid }),
        )
    } else {
        lookup(&rootfs.join("etc/passwd"), u).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "user {u:?} is not in the image's /etc/passwd; use a uid or a user it has"
            ))
        })?
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup(&rootfs.join("etc/group"), g)
                    .ok_or_else(|| {
                        CoreError::InvalidArgument(format!(
                            "group {g:?} is not in the image's /etc/group; use a gid"
                        ))
                    })?
                    .0
            }
        };
    }
    Ok((uid, gid))
}

fn lookup_uid_gid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    })
}

/// Parses a memory size: bytes, or with a k/m/g suffix (binary).
pub fn parse_memory(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mul)
        .ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "invalid memory size {s:?}: use bytes or a number with k, m or g"
            ))
        })
}

/// The whole spec.
pub fn build(
    id: &str,
    img: &ImageInspect,
    p: &CreateParams,
    rootfs: &Path,
    binds: &[BindMount],
) -> Result<Value> {
    let image = &img.config;
    let args = args(image, p)?;
    let env = env(image, p)?;
    let user = p
        .user
        .clone()
        .or_else(|| image.user.clone())
        .filter(|u| !u.is_empty());
    let (uid, gid) = match &user {
        Some(u) => resolve_user(u, rootfs)?,
        None => (0, 0),
    };
    let cwd = p
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(CoreError::InvalidArgument(format!(
            "invalid working directory {cwd:?}: it must be absolute"
        )));
    }
    let hostname = p.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for b in binds {
        let mut opts = vec!["rbind", "rprivate"];
        if b.read_only {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind",
                           "source": b.source, "options": opts}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(m) = p.memory {
        if m <= 0 {
            return Err(CoreError::InvalidArgument(format!(
                "invalid memory limit {m}"
            )));
        }
        resources["memory"] = json!({"limit": m});
    }
    if let Some(c) = p.cpus {
        if c.is_nan() || c <= 0.0 {
            return Err(CoreError::InvalidArgument(format!(
                "invalid --cpus {c}: it must be above 0"
            )));
        }
        resources["cpu"] = json!({"period": 100000u64, "quota": (c * 100000.0) as i64});
    }
    if let Some(n) = p.pids_limit {
        if n <= 0 {
            return Err(CoreError::InvalidArgument(format!(
                "invalid --pids-limit {n}: it must be above 0"
            )));
        }
        resources["pids"] = json!({"limit": n});
    }
    // Labels, and the image for the policy plugins in the shim (which
    // sees only the spec).
    let mut annotations: serde_json::Map<String, Value> = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    annotations.insert(IMAGE_REF_ANNOTATION.into(), json!(img.name));
    annotations.insert(
        IMAGE_DIGEST_ANNOTATION.into(),
        json!(img.digest.to_string()),
    );
    Ok(json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "process": {
            "terminal": p.tty,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": p.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/husk-{id}"),
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"]
        }
    }))
}

/// The spec `husk run IMAGE` would create, without a rootfs: for `husk
/// plugin test --image`. A named user cannot be resolved without the
/// image's /etc/passwd, so it is shown as root.
pub fn preview(img: &ImageInspect) -> Result<Value> {
    let p = CreateParams {
        image: img.name.clone(),
        ..Default::default()
    };
    let id = "0000000000000000000000000000000000000000000000000000000000000000";
    let nowhere = Path::new("/nonexistent/husk-plugin-test");
    build(id, img, &p, nowhere, &[]).or_else(|_| {
        let root = CreateParams {
            user: Some("0:0".into()),
            ..p.clone()
        };
        build(id, img, &root, nowhere, &[])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> InspectConfig {
        InspectConfig {
            entrypoint: Some(vec!["/bin/ep".into()]),
            cmd: Some(vec!["a".into()]),
            env: Some(vec!["A=1".into(), "PATH=/x".into()]),
            working_dir: Some("/w".into()),
            user: None,
        }
    }

    #[test]
    fn image_defaults_and_overrides() {
        let mut p = CreateParams {
            image: "i".into(),
            ..Default::default()
        };
        assert_eq!(args(&img(), &p).unwrap(), ["/bin/ep", "a"]);
        p.cmd = vec!["b".into()];
        assert_eq!(args(&img(), &p).unwrap(), ["/bin/ep", "b"]);
        p.env = vec!["A=2".into(), "B=3".into()];
        assert_eq!(env(&img(), &p).unwrap(), ["PATH=/x", "A=2", "B=3"]);
        p.env = vec!["bad".into()];
        assert!(env(&img(), &p).is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert!(parse_memory("x").is_err());
    }
}
