//! The hardened profile: defence in depth for untrusted workloads, which
//! the container's spec cannot turn off.
//!
//! The operator tunes it in one TOML file ([`Profile`], documented in
//! docs/hardened.md); the workload's spec never can. [`harden_spec`]
//! rewrites a spec to the profile, and is pure: everything that needs the
//! host (the uid range of [`ids`], the bundle checks of [`bundle`]) is done
//! by the caller and handed in.
//!
//! | module | concept |
//! | --- | --- |
//! | [`seccomp_default`] | the default seccomp allow-list, in Rust data |
//! | [`spec`] | `harden_spec`: the rewrite of a spec to the profile |
//! | [`ids`] | per-container host uid/gid ranges, allocated and released |
//! | [`bundle`] | refusing bundles that reach host paths through symlinks |

pub mod bundle;
pub mod ids;
pub mod seccomp_default;
pub mod spec;

use std::path::{Path, PathBuf};

use oci_spec::runtime::Capability;
use serde::{Deserialize, Serialize};

pub use bundle::{check_bundle, create_mount_points, make_rootfs_reachable};
pub use ids::{IdAllocator, IdRange};
pub use spec::{harden_process, harden_spec, HardenContext, HardeningReport};

/// Where the operator's profile lives unless [`PROFILE_ENV`] says otherwise.
pub const DEFAULT_PROFILE_PATH: &str = "/etc/husk/hardened.toml";
/// Names another profile file (which must then exist).
pub const PROFILE_ENV: &str = "HUSK_HARDENED_PROFILE";

/// Capabilities no profile can grant: each is a known escape or host
/// attack surface.
pub const FORBIDDEN_CAPABILITIES: [Capability; 5] = [
    Capability::SysAdmin,
    Capability::NetRaw,
    Capability::SysPtrace,
    Capability::SysModule,
    Capability::DacReadSearch,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hardened profile {path}: {reason}")]
    Profile { path: PathBuf, reason: String },

    #[error("hardened profile: {0}")]
    InvalidProfile(String),

    #[error("the hardened profile refuses this container: {0}")]
    Refused(String),

    #[error("user namespace id ranges: {0}")]
    Ids(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The operator's profile. Every field has a default (docs/hardened.md
/// lists them); unknown keys are refused, so a typo is not silently a
/// weaker profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    pub filesystem: Filesystem,
    pub user_namespace: UserNamespace,
    pub resources: Resources,
    pub capabilities: Capabilities,
    pub seccomp: Seccomp,
    pub landlock: Landlock,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filesystem {
    /// Leave the rootfs writable. Off: the rootfs is read-only, with a
    /// tmpfs on /tmp and /run.
    pub writable_rootfs: bool,
    /// Size of the /tmp and /run tmpfs, in MiB.
    pub tmpfs_size_mib: u64,
    /// Masked on top of the built-in list (never instead of it).
    pub extra_masked_paths: Vec<String>,
    /// Read-only on top of the built-in list.
    pub extra_readonly_paths: Vec<String>,
}

impl Default for Filesystem {
    fn default() -> Self {
        Filesystem {
            writable_rootfs: false,
            tmpfs_size_mib: 64,
            extra_masked_paths: Vec::new(),
            extra_readonly_paths: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserNamespace {
    /// Run every container in its own user namespace, its root mapped to
    /// an unprivileged host range.
    pub enabled: bool,
    /// First host id handed out.
    pub base: u32,
    /// Ids per container (container ids 0..size).
    pub size: u32,
    /// How many ranges exist: base + size * count is the end.
    pub count: u32,
    /// Where allocations are recorded (and locked).
    pub state_dir: PathBuf,
}

impl Default for UserNamespace {
    fn default() -> Self {
        UserNamespace {
            enabled: true,
            base: 1 << 20,
            size: 65536,
            count: 4096,
            state_dir: PathBuf::from("/run/husk/userns"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Highest number of tasks; a tighter spec value is kept.
    pub pids_limit: i64,
    /// Memory limit in MiB; a tighter spec value is kept.
    pub memory_limit_mib: u64,
    /// Forbid swap (memory+swap limit = memory limit).
    pub no_swap: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            pids_limit: 1024,
            memory_limit_mib: 1024,
            no_swap: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// The most any set may hold; a spec asking for fewer gets fewer.
    /// [`FORBIDDEN_CAPABILITIES`] are refused here.
    pub allowed: Vec<String>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            allowed: [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_KILL",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_NET_BIND_SERVICE",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seccomp {
    /// Syscalls allowed on top of the default allow-list. Names in
    /// [`seccomp_default::ALWAYS_DENIED`] are refused.
    pub extra_allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Landlock {
    /// Confine the container's processes to its root where the kernel has
    /// Landlock (skipped where it has not).
    pub enabled: bool,
}

impl Default for Landlock {
    fn default() -> Self {
        Landlock { enabled: true }
    }
}

/// Parses a capability name as the spec spells it (`CAP_CHOWN`).
pub fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The spec's spelling of a capability.
pub fn capability_name(c: Capability) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{c:?}"),
    }
}

impl Profile {
    /// Parses and checks a profile file's text.
    pub fn parse(text: &str) -> Result<Profile> {
        let profile: Profile =
            toml::from_str(text).map_err(|e| Error::InvalidProfile(e.to_string()))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Reads and checks the profile at `path`.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        })?;
        Profile::parse(&text).map_err(|e| match e {
            Error::InvalidProfile(reason) => Error::Profile {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// The profile in force: the file named by [`PROFILE_ENV`] (which must
    /// exist), else [`DEFAULT_PROFILE_PATH`] if it exists, else the
    /// defaults. Returns where it came from (`None`: the defaults).
    pub fn effective() -> Result<(Profile, Option<PathBuf>)> {
        if let Some(path) = std::env::var_os(PROFILE_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return Ok((Profile::load(&path)?, Some(path)));
        }
        let path = Path::new(DEFAULT_PROFILE_PATH);
        if path.exists() {
            return Ok((Profile::load(path)?, Some(path.to_path_buf())));
        }
        Ok((Profile::default(), None))
    }

    /// The profile as TOML, every field spelled out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The allowed capabilities, parsed (validated already).
    pub fn allowed_capabilities(&self) -> Vec<Capability> {
        self.capabilities
            .allowed
            .iter()
            .filter_map(|n| capability(n))
            .collect()
    }

    /// Checks what TOML cannot: names, ranges, the forbidden lists.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidProfile(msg));
        for name in &self.capabilities.allowed {
            let Some(cap) = capability(name) else {
                return bad(format!(
                    "capabilities.allowed: {name:?} is not a capability name (spell it like CAP_CHOWN)"
                ));
            };
            if FORBIDDEN_CAPABILITIES.contains(&cap) {
                return bad(format!(
                    "capabilities.allowed: {name} is never granted by the hardened profile; remove it"
                ));
            }
        }
        for name in &self.seccomp.extra_allow {
            if seccomp_default::ALWAYS_DENIED.contains(&name.as_str()) {
                return bad(format!(
                    "seccomp.extra_allow: {name} is always denied by the hardened profile; remove it"
                ));
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return bad(format!(
                    "seccomp.extra_allow: {name:?} is not a syscall name"
                ));
            }
        }
        let u = &self.user_namespace;
        if u.enabled {
            if u.base == 0 {
                return bad(
                    "user_namespace.base is 0: container root would be host root; use an unused range such as 1048576".into(),
                );
            }
            if u.size == 0 || u.count == 0 {
                return bad("user_namespace.size and user_namespace.count must be positive".into());
            }
            let end = u64::from(u.base) + u64::from(u.size) * u64::from(u.count);
            if end > u64::from(u32::MAX) {
                return bad(format!(
                    "user_namespace: base {} + size {} * count {} ends at {end}, past the last uid {}; lower count or size",
                    u.base,
                    u.size,
                    u.count,
                    u32::MAX
                ));
            }
            if !u.state_dir.is_absolute() {
                return bad(format!(
                    "user_namespace.state_dir {} must be an absolute path",
                    u.state_dir.display()
                ));
            }
        }
        let r = &self.resources;
        if r.pids_limit <= 0 {
            return bad(format!(
                "resources.pids_limit is {}: it must be positive",
                r.pids_limit
            ));
        }
        if r.memory_limit_mib < 4 {
            return bad(format!(
                "resources.memory_limit_mib is {}: give at least 4 MiB",
                r.memory_limit_mib
            ));
        }
        if self.filesystem.tmpfs_size_mib == 0 {
            return bad("filesystem.tmpfs_size_mib must be positive".into());
        }
        for p in self
            .filesystem
            .extra_masked_paths
            .iter()
            .chain(&self.filesystem.extra_readonly_paths)
        {
            if !p.starts_with('/') {
                return bad(format!(
                    "filesystem: path {p:?} must be absolute (inside the container)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let p = Profile::default();
        p.validate().unwrap();
        let text = p.to_toml();
        assert!(text.contains("[user_namespace]"), "{text}");
        assert!(text.contains("pids_limit = 1024"), "{text}");
        assert_eq!(Profile::parse(&text).unwrap(), p);
        // An empty file is the defaults.
        assert_eq!(Profile::parse("").unwrap(), p);
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let p = Profile::parse("[resources]\npids_limit = 64\n").unwrap();
        assert_eq!(p.resources.pids_limit, 64);
        assert_eq!(p.resources.memory_limit_mib, 1024);
        assert!(p.user_namespace.enabled);
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "[resources]\npid_limit = 5\n",
            "[filesystem]\nwritable = true\n",
            "[bogus]\n",
            "top = 1\n",
        ] {
            let err = Profile::parse(text).unwrap_err().to_string();
            assert!(err.contains("unknown"), "{text}: {err}");
        }
    }

    #[test]
    fn forbidden_capabilities_and_syscalls_are_refused() {
        for cap in FORBIDDEN_CAPABILITIES {
            let name = capability_name(cap);
            let err = Profile::parse(&format!("[capabilities]\nallowed = [\"{name}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&name) && err.contains("never"), "{err}");
        }
        let err = Profile::parse("[capabilities]\nallowed = [\"CAP_BOGUS\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CAP_BOGUS"), "{err}");
        for name in ["mount", "unshare", "bpf", "ptrace", "keyctl"] {
            let err = Profile::parse(&format!("[seccomp]\nextra_allow = [\"{name}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("always denied"), "{err}");
        }
        Profile::parse("[seccomp]\nextra_allow = [\"mbind\"]\n").unwrap_err();
        Profile::parse("[seccomp]\nextra_allow = [\"sync_file_range2\"]\n").unwrap();
    }

    #[test]
    fn ranges_and_limits_are_checked() {
        for (text, needle) in [
            ("[user_namespace]\nbase = 0\n", "host root"),
            ("[user_namespace]\nsize = 0\n", "positive"),
            ("[user_namespace]\ncount = 70000\n", "past the last uid"),
            ("[user_namespace]\nstate_dir = \"rel\"\n", "absolute"),
            ("[resources]\npids_limit = 0\n", "positive"),
            ("[resources]\nmemory_limit_mib = 1\n", "4 MiB"),
            (
                "[filesystem]\nextra_masked_paths = [\"proc/x\"]\n",
                "absolute",
            ),
        ] {
            let err = Profile::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        // Disabled, the range is not checked.
        Profile::parse("[user_namespace]\nenabled = false\nbase = 0\n").unwrap();
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hardened.toml");
        std::fs::write(&path, "[landlock]\nenabled = false\n").unwrap();
        assert!(!Profile::load(&path).unwrap().landlock.enabled);
        std::fs::write(&path, "[landlock]\nenable = false\n").unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = Profile::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
