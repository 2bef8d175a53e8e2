//! Loading and validating the OCI runtime spec (config.json) of a bundle.
//!
//! Validation happens before anything is created, so a bad spec costs
//! nothing: no state directory, cgroup, mount or process exists yet.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Reads `config.json` from `bundle`. Parse errors name the JSON path of the
/// offending field, e.g. `linux.namespaces[2].type: unknown variant "bogus"`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::Bundle {
        bundle: bundle.to_path_buf(),
        reason: format!("cannot read config.json: {e}; is this an OCI bundle directory?"),
    })?;
    parse(&text).map_err(|reason| Error::SpecParse { path, reason })
}

pub fn parse(text: &[u8]) -> std::result::Result<Spec, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            e.inner().to_string()
        } else {
            format!("{at}: {}", e.inner())
        }
    })
}

/// The absolute rootfs path: `root.path` resolved against the bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec.root().as_ref().ok_or_else(|| {
        Error::invalid_spec("root is missing: set root.path to the rootfs directory")
    })?;
    let path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason: format!("root.path {} is not a directory", path.display()),
        }),
        Err(e) => Err(Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason: format!(
                "rootfs {} is missing ({e}); unpack the image there or fix root.path",
                path.display()
            ),
        }),
    }
}

/// A container id must be usable as a single path component and a cgroup
/// name, and must not be able to climb out of the state directory.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason: reason.to_string(),
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 1024 {
        return bad("it is longer than 1024 bytes");
    }
    if id == "." || id == ".." {
        return bad("it is a relative path component");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    {
        return bad("only letters, digits and _ - . + are allowed");
    }
    Ok(())
}

/// Checks what serde cannot: relations between fields that would otherwise
/// fail half-way through container creation.
pub fn validate(spec: &Spec) -> Result<()> {
    let process = spec.process().as_ref().ok_or_else(|| {
        Error::invalid_spec("process is missing: the container needs a process to run")
    })?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => {
            return Err(Error::invalid_spec(
                "process.args is empty: give the command the container should run",
            ))
        }
    }
    if !process.cwd().is_absolute() {
        return Err(Error::invalid_spec(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    if let Some(env) = process.env() {
        if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
            return Err(Error::invalid_spec(format!(
                "process.env entry {bad:?} is not of the form KEY=VALUE"
            )));
        }
    }

    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(Error::invalid_spec(format!(
                "mount destination {:?} must be an absolute path inside the container",
                m.destination()
            )));
        }
    }

    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = HashSet::new();
    for ns in namespaces.into_iter().flatten() {
        if !seen.insert(ns.typ()) {
            return Err(Error::invalid_spec(format!(
                "namespace {} is listed twice in linux.namespaces",
                ns.typ()
            )));
        }
        if let Some(path) = ns.path() {
            if !path.is_absolute() {
                return Err(Error::invalid_spec(format!(
                    "namespace {} path {path:?} must be absolute",
                    ns.typ()
                )));
            }
        }
    }
    let userns = namespaces
        .into_iter()
        .flatten()
        .find(|ns| ns.typ() == LinuxNamespaceType::User);
    let new_userns = userns.is_some_and(|ns| ns.path().is_none());
    // With a joined one, maps are what it must have (checked on joining).
    let joined_userns = userns.is_some_and(|ns| ns.path().is_some());
    let has_maps = linux.is_some_and(|l| {
        l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            && l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    });
    if new_userns && !has_maps {
        return Err(Error::invalid_spec(
            "a new user namespace needs linux.uidMappings and linux.gidMappings",
        ));
    }
    let any_maps = linux.is_some_and(|l| {
        l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    });
    if any_maps && !new_userns && !joined_userns {
        return Err(Error::invalid_spec(
            "linux.uidMappings/gidMappings are set but no user namespace is requested",
        ));
    }
    if joined_userns && any_maps && !has_maps {
        return Err(Error::invalid_spec(
            "a joined user namespace is checked against both linux.uidMappings and linux.gidMappings: give both or neither",
        ));
    }
    let has_ns = |t| seen.contains(&t);
    if (spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
        || spec.domainname().as_ref().is_some_and(|h| !h.is_empty()))
        && !has_ns(LinuxNamespaceType::Uts)
    {
        return Err(Error::invalid_spec(
            "hostname/domainname are set but the container has no uts namespace; add {\"type\": \"uts\"} to linux.namespaces",
        ));
    }
    if linux.is_some_and(|l| l.time_offsets().is_some()) && !has_ns(LinuxNamespaceType::Time) {
        return Err(Error::invalid_spec(
            "linux.timeOffsets are set but the container has no time namespace",
        ));
    }
    if !has_ns(LinuxNamespaceType::Mount) {
        return Err(Error::invalid_spec(
            "the container has no mount namespace; husk needs one to set up the rootfs",
        ));
    }

    for hook in spec
        .hooks()
        .iter()
        .flat_map(|h| {
            [
                h.prestart(),
                h.create_runtime(),
                h.create_container(),
                h.start_container(),
                h.poststart(),
                h.poststop(),
            ]
        })
        .flatten()
        .flatten()
    {
        if !hook.path().is_absolute() {
            return Err(Error::invalid_spec(format!(
                "hook path {:?} must be absolute",
                hook.path()
            )));
        }
        if hook.timeout().is_some_and(|t| t <= 0) {
            return Err(Error::invalid_spec(format!(
                "hook {:?} has a timeout of {} s; it must be positive",
                hook.path(),
                hook.timeout().unwrap_or_default()
            )));
        }
    }
    for profile in crate::seccomp::profiles(spec)? {
        crate::seccomp::validate(&profile)?;
    }
    Ok(())
}

/// The spec `husk-runtime spec` writes: runc's default, running `sh`.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("husk".into()));
    if rootless {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        spec.set_linux(Some(oci_spec::runtime::Linux::rootless(uid, gid)));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn spec_of(v: &serde_json::Value) -> Spec {
        parse(v.to_string().as_bytes()).expect("test spec parses")
    }

    #[test]
    fn minimal_spec_is_valid() {
        validate(&spec_of(&minimal())).unwrap();
    }

    #[test]
    fn unknown_namespace_type_names_the_field() {
        let mut v = minimal();
        v["linux"]["namespaces"][1]["type"] = "bogus".into();
        let err = parse(v.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("linux.namespaces[1].type"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn malformed_json_is_reported() {
        let err = parse(b"{\"ociVersion\": ").unwrap_err();
        assert!(err.contains("EOF"), "{err}");
    }

    #[test]
    fn empty_args_are_refused() {
        let mut v = minimal();
        v["process"]["args"] = serde_json::json!([]);
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("process.args"), "{err}");
    }

    #[test]
    fn duplicate_namespaces_are_refused() {
        let mut v = minimal();
        v["linux"]["namespaces"] =
            serde_json::json!([{"type": "pid"}, {"type": "pid"}, {"type": "mount"}]);
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn user_namespace_needs_mappings() {
        let mut v = minimal();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}, {"type": "mount"}]);
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("uidMappings"), "{err}");
        v["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        validate(&spec_of(&v)).unwrap();
        // Joined: the maps are optional (what it must have), but both or none.
        v["linux"]["namespaces"] =
            serde_json::json!([{"type": "user", "path": "/proc/1/ns/user"}, {"type": "mount"}]);
        validate(&spec_of(&v)).unwrap();
        v["linux"]["gidMappings"] = serde_json::json!([]);
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("both or neither"), "{err}");
        // No user namespace at all: maps make no sense.
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("no user namespace"), "{err}");
    }

    #[test]
    fn hostname_needs_uts_namespace() {
        let mut v = minimal();
        v["hostname"] = "box".into();
        let err = validate(&spec_of(&v)).unwrap_err().to_string();
        assert!(err.contains("uts"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut v = minimal();
        v["mounts"] =
            serde_json::json!([{"destination": "tmp", "type": "tmpfs", "source": "tmpfs"}]);
        assert!(validate(&spec_of(&v))
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        let mut v = minimal();
        v["hooks"] = serde_json::json!({"poststop": [{"path": "hook.sh"}]});
        assert!(validate(&spec_of(&v))
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        let mut v = minimal();
        v["process"]["env"] = serde_json::json!(["NOEQUALS"]);
        assert!(validate(&spec_of(&v))
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
    }

    #[test]
    fn ids_are_checked() {
        validate_id("abc-123_x.y").unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_spec_round_trips_and_validates() {
        let spec = default_spec(false);
        let text = serde_json::to_vec(&spec).unwrap();
        validate(&parse(&text).unwrap()).unwrap();
    }
}
