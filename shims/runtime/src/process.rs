//! The container's process: rlimits, user and groups, capabilities,
//! no_new_privs, umask, environment, working directory, and the final exec.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{PosixRlimitType, Process};

use crate::capabilities::{self, CapSets};
use crate::error::{Context, Error, Result};
use crate::sys;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// The environment, with PATH and HOME filled in when the spec leaves them
/// out, as Docker does.
pub fn environment(process: &Process, home: impl FnOnce() -> Option<String>) -> Vec<String> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", home().unwrap_or_else(|| "/".into())));
    }
    env
}

/// The home directory of `uid` from the container's /etc/passwd.
pub fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

/// Finds the program to execute the way execvp(3) does, with the
/// container's PATH, so a missing binary fails `create`, not `start`.
pub fn find_executable(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let p = cwd.join(arg0);
        return if is_exec(&p) {
            Ok(PathBuf::from(arg0))
        } else {
            Err(Error::Init(format!(
                "exec {arg0:?}: no such executable file in the container"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(arg0))
        .find(|p| is_exec(&cwd.join(p)))
        .ok_or_else(|| {
            Error::Init(format!(
                "exec {arg0:?}: executable file not found in $PATH ({path})"
            ))
        })
}

/// Everything about credentials and limits, in the order the kernel allows:
/// limits and bounding set while still privileged, then the user switch
/// keeping capabilities, then the final capability sets.
pub fn apply_credentials(process: &Process) -> Result<()> {
    for rl in process.rlimits().iter().flatten() {
        sys::setrlimit(rlimit_resource(rl.typ()), rl.soft(), rl.hard())
            .context(|| format!("setrlimit {:?} to {}/{}", rl.typ(), rl.soft(), rl.hard()))?;
    }
    if let Some(adj) = process.oom_score_adj() {
        // In a user namespace the runtime has set it already (a
        // non-dumpable task's /proc files belong to host root).
        let current = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
        if current.trim() != adj.to_string() {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .context(|| format!("set oom_score_adj to {adj}"))?;
        }
    }
    let sets = process.capabilities().as_ref().map(CapSets::from_spec);
    if let Some(sets) = &sets {
        capabilities::apply_bounding(sets)?;
    }
    let user = process.user();
    sys::set_keep_caps(true).context(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let groups = user.additional_gids().clone().unwrap_or_default();
    // setgroups is denied in user namespaces whose setgroups file says "deny";
    // with no extra groups that is fine to skip.
    if let Err(e) = sys::setgroups(&groups) {
        if !groups.is_empty() || e.raw_os_error() != Some(libc::EPERM) {
            return Err(e).context(|| format!("setgroups {groups:?}"));
        }
    }
    sys::setresgid(user.gid()).context(|| format!("setresgid {}", user.gid()))?;
    sys::setresuid(user.uid()).context(|| format!("setresuid {}", user.uid()))?;
    sys::set_keep_caps(false).context(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    if let Some(sets) = &sets {
        capabilities::apply_process_sets(sets)?;
    }
    if process.no_new_privileges() == Some(true) {
        sys::set_no_new_privs().context(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    }
    if let Some(mask) = user.umask() {
        sys::umask(mask);
    }
    Ok(())
}

/// Replaces the current process with the container's program.
pub fn exec(program: &Path, args: &[String], env: &[String]) -> Error {
    match Exec::prepare(program, args, env) {
        Ok(exec) => exec.run(),
        Err(e) => e,
    }
}

/// An execve with its arguments already copied, so that nothing but the
/// execve itself runs after a seccomp filter is loaded.
pub struct Exec {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    pub fn prepare(program: &Path, args: &[String], env: &[String]) -> Result<Exec> {
        let to_c =
            |s: &[u8]| CString::new(s).map_err(|_| Error::Init("argument with a NUL byte".into()));
        Ok(Exec {
            program: to_c(program.as_os_str().as_bytes())?,
            args: args
                .iter()
                .map(|a| to_c(a.as_bytes()))
                .collect::<Result<_>>()?,
            env: env
                .iter()
                .map(|e| to_c(e.as_bytes()))
                .collect::<Result<_>>()?,
        })
    }

    /// Replaces the current process with the program; returns only on failure.
    pub fn run(&self) -> Error {
        let e = sys::execve(&self.program, &self.args, &self.env);
        Error::Init(format!("exec {}: {e}", self.program.to_string_lossy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;

    #[test]
    fn environment_fills_path_and_home() {
        let p = ProcessBuilder::default()
            .env(vec!["A=1".to_string()])
            .build()
            .unwrap();
        let env = environment(&p, || Some("/root".into()));
        assert_eq!(
            env,
            vec![
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/root".into()
            ]
        );
        let p = ProcessBuilder::default()
            .env(vec!["PATH=/x".to_string(), "HOME=/h".into()])
            .build()
            .unwrap();
        assert_eq!(
            environment(&p, || None),
            vec!["PATH=/x".to_string(), "HOME=/h".into()]
        );
    }

    #[test]
    fn home_comes_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nhusk:x:1000:1000::/home/husk:/bin/sh\n";
        assert_eq!(home_of(passwd, 1000).as_deref(), Some("/home/husk"));
        assert_eq!(home_of(passwd, 7), None);
    }

    #[test]
    fn executables_are_found_on_path() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("data"), "").unwrap();
        let env = vec![format!("PATH=/nope:{}", bin.display())];
        assert_eq!(
            find_executable("tool", &env, Path::new("/")).unwrap(),
            bin.join("tool")
        );
        let err = find_executable("data", &env, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found in $PATH"), "{err}");
        assert!(find_executable("/nonexistent/x", &env, Path::new("/")).is_err());
    }
}
