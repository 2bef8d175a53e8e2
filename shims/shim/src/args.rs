//! containerd's shim command line: Go `flag` syntax (`-namespace ns`,
//! `--namespace=ns`, `-debug`) followed by an action (`start`, `delete`,
//! husk's own `upgrade`), or no action for the daemon that serves the Task
//! API.

use crate::error::ShimError;

/// What containerd (or the `start` that daemonized us) asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address (`-address`); part of the socket name.
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    /// The daemon's listening socket address, passed on by `start` (and
    /// accepted by `upgrade`).
    pub socket: String,
    /// `upgrade -binary PATH`: the new binary.
    pub binary: String,
    pub debug: bool,
    pub version: bool,
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Action {
    /// No action: serve the Task API (the daemonized shim).
    #[default]
    Serve,
    Start,
    Delete,
    /// `upgrade`: ask the running shim to swap its binary live.
    Upgrade,
}

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, ShimError> {
        let mut args = Args::default();
        let mut it = argv.into_iter();
        let mut positional = Vec::new();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
                positional.push(a);
                continue;
            };
            if flag.is_empty() {
                positional.extend(it.by_ref());
                break;
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            match name {
                "debug" | "v" | "version" => {
                    let on = inline.as_deref().is_none_or(|v| v != "false");
                    if name == "debug" {
                        args.debug = on;
                    } else {
                        args.version = on;
                    }
                }
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket"
                | "binary" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it.next().ok_or_else(|| {
                            ShimError::InvalidArgument(format!("flag -{name} needs a value"))
                        })?,
                    };
                    let slot = match name {
                        "namespace" => &mut args.namespace,
                        "id" => &mut args.id,
                        "address" => &mut args.address,
                        "publish-binary" => &mut args.publish_binary,
                        "bundle" => &mut args.bundle,
                        "binary" => &mut args.binary,
                        _ => &mut args.socket,
                    };
                    *slot = value;
                }
                other => {
                    // Newer containerd versions may add flags; ignore the
                    // unknown ones rather than refuse to start.
                    tracing::debug!(flag = other, "ignoring unknown flag");
                }
            }
        }
        args.action = match positional.first().map(String::as_str) {
            None => Action::Serve,
            Some("start") => Action::Start,
            Some("delete") => Action::Delete,
            Some("upgrade") => Action::Upgrade,
            Some(other) => {
                return Err(ShimError::InvalidArgument(format!(
                    "unknown action {other:?}: expected `start`, `delete`, `upgrade` or none"
                )))
            }
        };
        if args.namespace.is_empty() {
            if let Ok(ns) = std::env::var("NAMESPACE") {
                args.namespace = ns;
            }
        }
        Ok(args)
    }

    /// Checks what every action needs.
    pub fn require_id(&self) -> Result<(), ShimError> {
        if self.id.is_empty() {
            return Err(ShimError::InvalidArgument("-id is required".into()));
        }
        if self.namespace.is_empty() {
            return Err(ShimError::InvalidArgument(
                "-namespace (or $NAMESPACE) is required".into(),
            ));
        }
        Ok(())
    }

    /// The daemon's form of these arguments (no action: serve), as `start`
    /// hands them to the daemon it forks and a live swap to the next
    /// binary.
    pub fn daemon_argv(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = [
            "-namespace",
            &self.namespace,
            "-id",
            &self.id,
            "-address",
            &self.address,
            "-publish-binary",
            &self.publish_binary,
            "-socket",
            &self.socket,
        ]
        .iter()
        .map(Into::into)
        .collect();
        if self.debug {
            v.push("-debug".into());
        }
        v
    }

    /// `start`'s arguments as the daemon it forks serves with.
    pub fn for_daemon(&self, socket: &str) -> Args {
        Args {
            socket: socket.to_string(),
            bundle: String::new(),
            binary: String::new(),
            version: false,
            action: Action::Serve,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Args {
        Args::parse(s.split_whitespace().map(String::from)).unwrap()
    }

    #[test]
    fn containerd_start_flags() {
        let a = parse("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id x1 -debug start");
        assert_eq!(a.namespace, "default");
        assert_eq!(a.address, "/run/c.sock");
        assert_eq!(a.publish_binary, "/usr/bin/containerd");
        assert_eq!(a.id, "x1");
        assert!(a.debug);
        assert_eq!(a.action, Action::Start);
    }

    #[test]
    fn double_dash_and_equals() {
        let a = parse("--namespace=k8s.io --id=abc -bundle /b delete");
        assert_eq!(a.namespace, "k8s.io");
        assert_eq!(a.id, "abc");
        assert_eq!(a.bundle, "/b");
        assert_eq!(a.action, Action::Delete);
    }

    #[test]
    fn upgrade_with_a_binary() {
        let a = parse("-namespace default -address /c.sock -id x1 upgrade -binary /new/shim");
        assert_eq!(a.action, Action::Upgrade);
        assert_eq!(a.binary, "/new/shim");
        assert_eq!(a.id, "x1");
    }

    #[test]
    fn the_daemon_form_parses_back() {
        let a = parse("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id x1 -debug start");
        let d = a.for_daemon("unix:///run/containerd/s/abc");
        let argv: Vec<String> = d
            .daemon_argv()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(Args::parse(argv).unwrap(), d);
        assert_eq!(d.action, Action::Serve);
        assert_eq!(d.socket, "unix:///run/containerd/s/abc");
        assert_eq!((d.namespace.as_str(), d.id.as_str()), ("default", "x1"));
    }

    #[test]
    fn no_action_serves_and_unknown_flags_pass() {
        let a = parse("-namespace n -id i -future-flag");
        assert_eq!(a.action, Action::Serve);
        assert!(Args::parse(["bogus".to_string()]).is_err());
        assert!(Args::parse(["-id".to_string()]).is_err());
    }
}
