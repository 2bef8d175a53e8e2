//! OCI hooks: programs run at points of the container's life, given the
//! container's state as JSON on stdin.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Deprecated in the spec but still sent by older engines; runs with createRuntime.
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// Runs every hook of `kind` in order and stops at the first failure.
pub fn run(kind: HookKind, hooks: Option<&Hooks>, state_json: &str) -> Result<()> {
    for hook in hooks.map(|h| kind.of(h)).unwrap_or_default() {
        run_one(kind, hook, state_json)?;
    }
    Ok(())
}

/// Runs the hooks of `kind` and only logs failures: the spec says poststart
/// and poststop failures must not stop the lifecycle.
pub fn run_warn(kind: HookKind, hooks: Option<&Hooks>, state_json: &str) {
    for hook in hooks.map(|h| kind.of(h)).unwrap_or_default() {
        if let Err(e) = run_one(kind, hook, state_json) {
            tracing::warn!("{e}");
        }
    }
}

fn run_one(kind: HookKind, hook: &Hook, state_json: &str) -> Result<()> {
    let fail = |reason: String| Error::Hook {
        hook: kind.name().into(),
        path: hook.path().clone(),
        reason,
    };
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some(arg0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|e| e.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let output = {
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let collect = std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_string(&mut out);
            }
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_string(&mut out);
            }
            out
        });
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that ignores its stdin may exit before reading it.
            let _ = stdin.write_all(state_json.as_bytes());
        }
        collect
    };
    let deadline = hook
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {} s and was killed",
                hook.timeout().unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let out = output.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        let tail: String = out
            .trim()
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(fail(format!("{status}: {tail}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        let b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".to_string(),
            "-c".into(),
            script.into(),
        ]);
        match timeout {
            Some(t) => b.timeout(t).build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    #[test]
    fn hooks_get_state_on_stdin_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hooks = HooksBuilder::default()
            .poststop(vec![
                hook(&format!("cat >> {}", out.display()), None),
                hook(&format!("echo second >> {}", out.display()), None),
            ])
            .build()
            .unwrap();
        run(HookKind::Poststop, Some(&hooks), "{\"id\":\"x\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "{\"id\":\"x\"}second\n"
        );
    }

    #[test]
    fn failing_hook_reports_its_output() {
        let hooks = HooksBuilder::default()
            .create_runtime(vec![hook("echo broken >&2; exit 3", None)])
            .build()
            .unwrap();
        let err = run(HookKind::CreateRuntime, Some(&hooks), "{}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("createRuntime") && err.contains("broken") && err.contains('3'),
            "{err}"
        );
    }

    #[test]
    fn slow_hook_times_out() {
        let hooks = HooksBuilder::default()
            .create_runtime(vec![hook("exec sleep 30", Some(1))])
            .build()
            .unwrap();
        let started = Instant::now();
        let err = run(HookKind::CreateRuntime, Some(&hooks), "{}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
