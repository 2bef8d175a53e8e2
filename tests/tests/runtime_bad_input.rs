//! Bad input to `husk-runtime`: each case fails with an error that names
//! what was wrong, and leaves no state, cgroup, mount or process behind.

use std::time::{Duration, Instant};

use husk_tests::leaks::assert_no_leaks;
use husk_tests::{require_root, unique_id, Bundle, HuskRuntime};
use oci_spec::runtime::{HookBuilder, HooksBuilder, MountBuilder};

#[test]
fn missing_rootfs() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("norootfs");
    let bundle = Bundle::busybox(&["true"]);
    std::fs::remove_dir_all(bundle.rootfs()).unwrap();
    let err = rt.create_fails(&bundle, &id);
    assert!(err.contains("rootfs") && err.contains("missing"), "{err}");
}

#[test]
fn malformed_config_json() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("badjson");
    let bundle = Bundle::busybox(&["true"]);
    std::fs::write(
        bundle.config_path(),
        b"{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("config.json") && err.contains("not a valid OCI runtime spec"),
        "{err}"
    );
}

#[test]
fn unknown_namespace_type() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("badns");
    let bundle = Bundle::busybox(&["true"]);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.config_path()).unwrap()).unwrap();
    json["linux"]["namespaces"][0]["type"] = "bogus".into();
    std::fs::write(bundle.config_path(), json.to_string()).unwrap();
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("linux.namespaces[0].type") && err.contains("bogus"),
        "{err}"
    );
}

fn hook(script: &str, timeout: Option<i64>) -> oci_spec::runtime::Hook {
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
fn failing_hook() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("hookfail");
    let mut bundle = Bundle::busybox(&["true"]);
    bundle.update_spec(|s| {
        s.set_hooks(Some(
            HooksBuilder::default()
                .create_runtime(vec![hook("echo no-network-for-you >&2; exit 3", None)])
                .build()
                .unwrap(),
        ));
    });
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("createRuntime hook") && err.contains("no-network-for-you"),
        "{err}"
    );
}

#[test]
fn hook_that_times_out() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("hookslow");
    let mut bundle = Bundle::busybox(&["true"]);
    bundle.update_spec(|s| {
        s.set_hooks(Some(
            HooksBuilder::default()
                .create_container(vec![hook("exec sleep 60", Some(1))])
                .build()
                .unwrap(),
        ));
    });
    let started = Instant::now();
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("createContainer hook") && err.contains("timed out"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn id_that_already_exists() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("dup");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    rt.run_ok(&["create", "--bundle", bundle.path().to_str().unwrap(), &id]);
    let out = rt.output(&["create", "--bundle", bundle.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already exists"),
        "{err}"
    );
    // The first container is untouched.
    assert_eq!(rt.state(&id)["status"], "created");
    rt.run_ok(&["delete", &id]);
    assert_no_leaks(&id);
}

#[test]
fn kill_of_an_unknown_id() {
    let rt = HuskRuntime::new();
    for args in [
        vec!["kill", "no-such-container", "TERM"],
        vec!["state", "no-such-container"],
        vec!["start", "no-such-container"],
        vec!["delete", "no-such-container"],
    ] {
        let out = rt.output(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("\"no-such-container\" does not exist"),
            "{args:?}: {err}"
        );
    }
    let out = rt.output(&["kill", "../../etc", "TERM"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid container id"));
}

#[test]
fn mount_target_escaping_through_a_symlink() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("escape");
    let target = tempfile::Builder::new()
        .prefix("husk-escape-target-")
        .tempdir()
        .unwrap();
    let mut bundle = Bundle::busybox(&["true"]);
    // ../../../.. from the rootfs climbs to the host's /.
    let climb = format!("../../../../../../../..{}", target.path().display());
    std::os::unix::fs::symlink(&climb, bundle.rootfs().join("evil")).unwrap();
    bundle.update_spec(|s| {
        let mut mounts = s.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/evil/x")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        );
        s.set_mounts(Some(mounts));
    });
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("/evil/x") && err.contains("outside the container's rootfs"),
        "{err}"
    );
    // Nothing was created or mounted at the host target.
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(target.path().to_str().unwrap()));
}

#[test]
fn missing_executable_fails_create_not_start() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("noexe");
    let bundle = Bundle::busybox(&["/bin/does-not-exist"]);
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("does-not-exist") && err.contains("no such executable"),
        "{err}"
    );
}

#[test]
fn errors_reach_a_json_log_as_containerd_reads_them() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("jsonlog");
    let bundle = Bundle::busybox(&["true"]);
    std::fs::remove_dir_all(bundle.rootfs()).unwrap();
    let log = bundle.path().join("log.json");
    let out = rt.output(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    // containerd's runc shim takes the last line with level "error".
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error", "{text}");
    assert!(last["msg"].as_str().unwrap().contains("rootfs"), "{text}");
    assert!(last["time"].as_str().unwrap().contains('T'), "{text}");
    assert_no_leaks(&id);
}
