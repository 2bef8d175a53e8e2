//! Must show (plugins issue), end to end under huskd: `husk plugin
//! install/ls/rm/test`, a denied `husk run` that fails with the reason and
//! leaves nothing, a mutation seen from inside the container, audit mode,
//! hot reload without restarting huskd, misbehaving plugins stopped within
//! their limits, and bad plugins refused at install.

mod core_common;

use std::time::{Duration, Instant};

use core_common::{Huskd, IMAGE};
use husk_tests::command::{stderr_text as stderr, stdout_text as stdout};
use husk_tests::leaks::{assert_no_leaks, mounts_matching, processes_matching};
use husk_tests::plugin_config::{capability_mask, plugin_file, CAP_NET_RAW_BIT};
use husk_tests::require_root;

fn huskd() -> Huskd {
    let d = Huskd::start();
    d.import_busybox();
    d
}

fn install(d: &Huskd, file: &str, extra: &[&str]) -> String {
    let path = plugin_file(file);
    let mut args = vec!["plugin", "install", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    d.husk_ok(&args)
}

fn cap_mask(status: &str, field: &str) -> u64 {
    capability_mask(status, field).unwrap_or_else(|| {
        panic!(
            "no {field} in in:
{status}"
        )
    })
}

/// Nothing of huskd's containers is left: no record, mount, shim or cgroup.
fn assert_nothing_left(d: &Huskd) {
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    let tmp = d.tmp.path().to_string_lossy().into_owned();
    // A spare shim's rootfs, mounted ahead for the next create, is no
    // container's.
    let spare_rootfs = d.state.join("spares").to_string_lossy().into_owned();
    let mounts: Vec<String> = mounts_matching(&tmp)
        .into_iter()
        .filter(|m| !m.contains(&spare_rootfs))
        .collect();
    assert_eq!(mounts, Vec::<String>::new());
    // A shim exits right after answering Shutdown; the spare shims huskd
    // keeps ready serve no container.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spares: Vec<u32> = d.spare_shims().into_iter().map(|s| s.1).collect();
        let shims: Vec<_> = processes_matching(&tmp)
            .into_iter()
            .filter(|p| p.cmdline.contains("containerd-shim") && !spares.contains(&p.pid))
            .collect();
        if shims.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "shims left: {shims:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The denied container's id, from huskd's log of the failed create.
    for line in d.log().lines().filter(|l| l.contains("create failed")) {
        if let Some(id) = line
            .split("id=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
        {
            assert_no_leaks(id);
        }
    }
}

#[test]
fn a_denied_run_fails_with_the_reason_and_leaves_nothing() {
    require_root!();
    let d = huskd();
    install(&d, "rust-policy.wasm", &["--name", "security"]);
    let out = d.husk(&["run", "--rm", "-e", "API_TOKEN=hunter2", IMAGE, "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "husk: denied by policy security: environment variable API_TOKEN looks like a secret"
        ),
        "{}",
        stderr(&out)
    );
    assert!(d.log().contains("create failed"), "{}", d.log());
    assert_nothing_left(&d);
    // The same container without the secret runs: the denial was the policy's.
    assert_eq!(d.husk_ok(&["run", "--rm", IMAGE, "echo", "ok"]), "ok\n");
}

#[test]
fn a_mutated_container_lacks_cap_net_raw() {
    require_root!();
    let d = huskd();
    let before = d.husk_ok(&["run", "--rm", IMAGE, "cat", "/proc/1/status"]);
    assert_ne!(
        cap_mask(&before, "CapBnd:") & CAP_NET_RAW_BIT,
        0,
        "the test needs NET_RAW by default"
    );
    install(&d, "rust-policy.wasm", &["--name", "security"]);
    let out = d.husk(&["run", "--rm", IMAGE, "cat", "/proc/1/status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&out);
    for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
        assert_eq!(
            cap_mask(&status, field) & CAP_NET_RAW_BIT,
            0,
            "{field}: {status}"
        );
    }
    assert!(
        stderr(&out).contains("policy security: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn audit_mode_runs_the_container_and_reports_the_would_deny() {
    require_root!();
    let d = huskd();
    install(&d, "rust-policy.wasm", &["--name", "security", "--audit"]);
    let out = d.husk(&["run", "--rm", "-e", "DB_PASSWORD=x", IMAGE, "echo", "ran"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ran\n");
    assert!(
        stderr(&out).contains(
            "husk: audit: policy security would deny: environment variable DB_PASSWORD looks like a secret"
        ),
        "{}",
        stderr(&out)
    );
}

/// A spare shim's bundle comes with an empty `husk-policy.json`, made in
/// the background like its FIFOs, so that the create writes the policy
/// plugins' decision in place: a create whose plugins only allow leaves it
/// empty and reports nothing; edits are recorded in it and reported.
#[test]
fn the_decision_record_comes_with_the_spare_and_is_written_in_place() {
    require_root!();
    let d = huskd();
    install(&d, "wat-allow.wasm", &["--name", "allow"]);
    // The spare started before the install has no record; the next has.
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    let spares = d.state.join("spares");
    let deadline = Instant::now() + Duration::from_secs(20);
    let record_in_a_spare = || {
        std::fs::read_dir(&spares)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("husk-policy.json").exists())
    };
    while !record_in_a_spare() || d.spare_shims().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no spare shim with an empty husk-policy.json"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let record = |id: &str| {
        std::fs::read_to_string(d.state.join("bundles").join(id).join("husk-policy.json"))
            .unwrap_or_default()
    };

    let out = d.husk(&["run", "-d", IMAGE, "sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("policy"), "{}", stderr(&out));
    let allowed = stdout(&out).trim().to_string();
    assert_eq!(record(&allowed), "", "nothing to record");

    install(&d, "rust-policy.wasm", &["--name", "security"]);
    let out = d.husk(&["run", "-d", IMAGE, "sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("policy security: drop-capability CAP_NET_RAW"),
        "{}",
        stderr(&out)
    );
    let edited = stdout(&out).trim().to_string();
    let json: serde_json::Value = serde_json::from_str(&record(&edited)).unwrap();
    assert!(
        json["edits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["plugin"] == "security" && e["note"] == "drop-capability CAP_NET_RAW"),
        "{json}"
    );
    d.husk_ok(&["rm", "-f", &allowed, &edited]);
    assert_nothing_left(&d);
}

#[test]
fn hot_reload_swaps_a_policy_without_restarting_huskd() {
    require_root!();
    let d = huskd();
    let pid = d.pid();
    let secret = ["run", "--rm", "-e", "GITHUB_TOKEN=ghp_x", IMAGE, "true"];
    install(&d, "wat-allow.wasm", &["--name", "gate"]);
    assert!(d.husk(&secret).status.success());
    // Same name, new code: the next container gets it.
    install(&d, "rust-policy.wasm", &["--name", "gate"]);
    let out = d.husk(&secret);
    assert!(
        stderr(&out).contains("denied by policy gate"),
        "{}",
        stderr(&out)
    );
    d.husk_ok(&["plugin", "rm", "gate"]);
    assert!(d.husk(&secret).status.success());
    assert_eq!(d.pid(), pid, "huskd was restarted");
}

#[test]
fn the_registry_rule_sees_the_image_reference() {
    require_root!();
    let d = huskd();
    install(
        &d,
        "rust-policy.wasm",
        &[
            "--name",
            "registries",
            "--config",
            "allowed-registries=ghcr.io",
        ],
    );
    let out = d.husk(&["run", "--rm", IMAGE, "true"]);
    assert!(
        stderr(&out).contains(&format!(
            "image {IMAGE} is not from an allowed registry (ghcr.io)"
        )),
        "{}",
        stderr(&out)
    );
    install(
        &d,
        "rust-policy.wasm",
        &[
            "--name",
            "registries",
            "--config",
            "allowed-registries=husk.test",
        ],
    );
    assert_eq!(d.husk_ok(&["run", "--rm", IMAGE, "echo", "ok"]), "ok\n");
}

#[test]
fn misbehaving_plugins_are_stopped_within_their_limits() {
    require_root!();
    let d = huskd();
    let cases = [
        ("wat-loop.wasm", "--time-limit", "50"),
        ("wat-membomb.wasm", "--memory-limit", "16"),
        ("wat-trap.wasm", "--time-limit", "100"),
        ("wat-invalid-mutation.wasm", "--time-limit", "100"),
    ];
    for (file, flag, value) in cases {
        for on_error in ["deny", "allow"] {
            install(
                &d,
                file,
                &["--name", "bad", flag, value, "--on-error", on_error],
            );
            let t = Instant::now();
            let out = d.husk(&["run", "--rm", IMAGE, "true"]);
            let took = t.elapsed();
            assert!(took < Duration::from_secs(10), "{file}: {took:?}");
            if on_error == "deny" {
                assert!(!out.status.success(), "{file} was allowed");
                assert!(
                    stderr(&out).contains("denied by policy bad"),
                    "{file}: {}",
                    stderr(&out)
                );
            } else {
                assert!(
                    out.status.success(),
                    "{file} with on-error allow: {}",
                    stderr(&out)
                );
            }
        }
    }
    assert_nothing_left(&d);
}

/// A container created when no plugin had start or exit hooks (whose shim
/// then skips those requests while the config and plugin files are
/// unchanged) still has its start and exit seen by a lifecycle plugin
/// installed before it starts: the config changed, so the shim asks.
#[test]
fn a_lifecycle_plugin_installed_after_create_sees_start_and_exit() {
    require_root!();
    let d = huskd();
    install(&d, "rust-policy.wasm", &["--name", "security"]);
    let id = d.husk_ok(&["create", IMAGE, "true"]).trim().to_string();
    install(
        &d,
        "rust-lifecycle.wasm",
        &["--name", "recorder", "--grant", "store"],
    );
    d.husk_ok(&["start", &id]);
    d.wait_status(&id, "stopped");
    let store = d.root.join("plugins/state/recorder.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&store).unwrap_or_default();
        if text.contains(&format!("start/{id}")) && text.contains(&format!("exit/{id}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the start and exit of {id} not recorded in {}: {text}",
            store.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.husk_ok(&["rm", &id]);
}

#[test]
fn plugin_ls_test_rm() {
    require_root!();
    let d = huskd();
    install(&d, "rust-policy.wasm", &["--name", "security"]);
    install(
        &d,
        "rust-lifecycle.wasm",
        &["--name", "recorder", "--grant", "store"],
    );
    let ls = d.husk_ok(&["plugin", "ls"]);
    assert!(ls.contains("security") && ls.contains("create"), "{ls}");
    assert!(ls.contains("recorder") && ls.contains("start,exit"), "{ls}");
    // The image's spec: allowed with edits, nothing run.
    let t = d.husk_ok(&["plugin", "test", "security", "--image", IMAGE]);
    assert!(t.contains("mutate") && t.contains("CAP_NET_RAW"), "{t}");
    // A spec file with a secret: denied, exit status 1.
    let spec = d.tmp.path().join("config.json");
    let mut v = serde_json::to_value(husk_runtime::spec::default_spec(false)).unwrap();
    v["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("AWS_KEY=AKIAXXXX".into());
    std::fs::write(&spec, v.to_string()).unwrap();
    let out = d.husk(&[
        "plugin",
        "test",
        "security",
        "--spec",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deny: environment variable AWS_KEY looks like a secret"),
        "{}",
        stdout(&out)
    );
    d.husk_ok(&["plugin", "rm", "security"]);
    let out = d.husk(&["plugin", "rm", "security"]);
    assert!(
        stderr(&out).contains("no plugin \"security\" is installed"),
        "{}",
        stderr(&out)
    );
    assert!(!d.husk_ok(&["plugin", "ls"]).contains("security"));
}

/// Each bad plugin is refused with an error naming the problem, and
/// nothing is installed.
#[test]
fn bad_plugins_are_refused_at_install() {
    require_root!();
    let d = huskd();
    let cases: [(&str, &[&str], &str); 4] = [
        ("fixture-not-wasm.wasm", &[], "not a WebAssembly"),
        ("fixture-other-world.wasm", &[], "husk:plugin"),
        ("fixture-wrong-version.wasm", &[], "0.2.0"),
        ("rust-lifecycle.wasm", &[], "store"),
    ];
    for (file, extra, needle) in cases {
        let path = plugin_file(file);
        let mut args = vec!["plugin", "install", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = d.husk(&args);
        assert!(!out.status.success(), "{file} was installed");
        assert!(stderr(&out).contains(needle), "{file}: {}", stderr(&out));
    }
    let out = d.husk(&["plugin", "install", "/nonexistent/p.wasm"]);
    assert!(
        stderr(&out).contains("/nonexistent/p.wasm"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        d.husk_ok(&["plugin", "ls", "--format", "json"]).trim(),
        "[]"
    );
    // No plugin: containers run as before.
    assert_eq!(d.husk_ok(&["run", "--rm", IMAGE, "echo", "ok"]), "ok\n");
}
