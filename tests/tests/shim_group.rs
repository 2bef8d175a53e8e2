//! Must show: containers with the same `io.kubernetes.cri.sandbox-id`
//! annotation share one shim, and a second `start` for the group prints the
//! existing address.
//!
//! The shim binary is driven the way containerd drives it: `start` with
//! containerd's flags and environment in the bundle directory, then the
//! Task API over ttrpc on the printed address. (The CRI plugin path needs
//! a CRI client; Debian 12 has no cri-tools, see the report in issue 3.)

#[path = "shim_common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::types::task::Status;
use husk_tests::bundle::Bundle;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{command, require_root, unique_id, Containerd};

const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// `containerd-shim-husk-v2 ... -id ID start` in `bundle`, as containerd
/// runs it; returns the printed address.
fn shim_start(ctd: &Containerd, namespace: &str, id: &str, bundle: &Path) -> String {
    let bin = shim_dir().join(SHIM_BIN);
    let address = ctd.address();
    let mut cmd = Command::new(bin);
    cmd.args(["-namespace", namespace, "-address"])
        .arg(&address)
        .args(["-publish-binary"])
        .arg(husk_tests::require_command("containerd"))
        .args(["-id", id, "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", ctd.ttrpc_address())
        .env("GRPC_ADDRESS", &address)
        .env("NAMESPACE", namespace)
        // Debug logging must not reach the output containerd reads the
        // address from (stdout and stderr together, in containerd 1.6).
        .env("HUSK_SHIM_LOG", "debug");
    let out = command::output_timeout(&mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "shim start: {}",
        command::format_output(&out)
    );
    assert!(out.stderr.is_empty(), "{}", command::format_output(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains(char::is_whitespace), "{printed:?}");
    assert!(
        printed.starts_with("unix:///run/containerd/s/"),
        "{printed}"
    );
    printed
}

fn pod_bundle(sandbox: &str, args: &[&str]) -> Bundle {
    let mut b = Bundle::busybox(args);
    b.update_spec(|s| {
        let mut a = HashMap::new();
        a.insert(SANDBOX_ANNOTATION.to_string(), sandbox.to_string());
        s.set_annotations(Some(a));
    });
    b
}

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn one_shim_per_sandbox() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    // A namespace of its own: the shim keeps runtime state per namespace.
    let ns = unique_id("shim-ns");
    let sandbox = unique_id("shim-pod");
    let (a, b) = (unique_id("shim-pod-a"), unique_id("shim-pod-b"));
    let bundle_a = pod_bundle(&sandbox, &["/bin/sleep", "600"]);
    let bundle_b = pod_bundle(&sandbox, &["/bin/sh", "-c", "echo b; sleep 600"]);

    let addr_a = shim_start(ctd, &ns, &a, bundle_a.path());
    let shims = shim_pids(ctd);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim = shims[0];
    let addr_b = shim_start(ctd, &ns, &b, bundle_b.path());
    assert_eq!(addr_a, addr_b, "two containers of one pod, two shims");
    assert_eq!(shim_pids(ctd), vec![shim], "a second shim was started");
    // Both bundles point at the one shim, as containerd reads it back.
    for bundle in [&bundle_a, &bundle_b] {
        let written = std::fs::read_to_string(bundle.path().join("address")).unwrap();
        assert_eq!(written, addr_a);
    }
    // A container of another pod gets a shim of its own.
    let other_sandbox = unique_id("shim-pod2");
    let c = unique_id("shim-pod2-c");
    let bundle_c = pod_bundle(&other_sandbox, &["/bin/true"]);
    let addr_c = shim_start(ctd, &ns, &c, bundle_c.path());
    assert_ne!(addr_c, addr_a);
    assert_eq!(shim_pids(ctd).len(), 2);

    // Both tasks through the one socket.
    let client = task_client(&addr_a);
    let log = env.tmp.path().join("b.out");
    for (id, bundle) in [(&a, &bundle_a), (&b, &bundle_b)] {
        let stdout = if id == &b {
            format!("file://{}", log.display())
        } else {
            String::new()
        };
        client
            .create(
                ttrpc_ctx(),
                &api::CreateTaskRequest {
                    id: id.clone(),
                    bundle: bundle.path().to_string_lossy().into_owned(),
                    stdout,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("Create {id}: {e:?}"));
        client
            .start(
                ttrpc_ctx(),
                &api::StartRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("Start {id}: {e:?}"));
    }
    let mut inits = Vec::new();
    for id in [&a, &b] {
        let st = client
            .state(
                ttrpc_ctx(),
                &api::StateRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(st.status.value(), Status::RUNNING as i32, "{id}");
        // The init is the shim's child (reparented to it, the subreaper).
        assert_eq!(parent_of(st.pid), shim, "{id}'s init");
        inits.push(st.pid);
        let connect = client
            .connect(
                ttrpc_ctx(),
                &api::ConnectRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(connect.shim_pid, shim);
        assert_eq!(connect.task_pid, st.pid);
    }
    assert_ne!(inits[0], inits[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap_or_default() != "b\n" {
        assert!(Instant::now() < deadline, "b's output never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Shutdown with a container left does not end the shim.
    client
        .shutdown(ttrpc_ctx(), &api::ShutdownRequest::default())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(shim_pids(ctd).len(), 2);

    for id in [&a, &b] {
        client
            .kill(
                ttrpc_ctx(),
                &api::KillRequest {
                    id: id.clone(),
                    signal: libc::SIGKILL as u32,
                    ..Default::default()
                },
            )
            .unwrap();
        let w = client
            .wait(
                ttrpc_ctx(),
                &api::WaitRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(w.exit_status, 137);
        client
            .delete(
                ttrpc_ctx(),
                &api::DeleteRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let _ = client.shutdown(ttrpc_ctx(), &api::ShutdownRequest::default());
    drop(client);
    // The other pod's shim holds no container: Shutdown ends it.
    let _ = task_client(&addr_c).shutdown(ttrpc_ctx(), &api::ShutdownRequest::default());
    wait_no_shims(ctd);
    for addr in [&addr_a, &addr_c] {
        let path = addr.trim_start_matches("unix://");
        assert!(!Path::new(path).exists(), "socket {path} left behind");
    }
    for id in [&a, &b, &c, &sandbox, &other_sandbox] {
        assert_no_leaks(id);
    }
    let _ = std::fs::remove_dir(Path::new("/run/containerd/husk").join(&ns));
}
