//! Must show (plugins issue): the same plugin config enforced under real
//! containerd 1.6 with `ctr run --runtime io.containerd.husk.v2
//! --runtime-config-path plugins.toml` — containerd hands the path to the
//! shim as `runtimeoptions.v1.Options`, and the hooks run in the shim.

#[path = "shim_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::plugin_config::{
    allowed_registries, capability_mask, PluginsToml, CAP_NET_RAW_BIT,
};
use husk_tests::{require_root, unique_id};

fn config(env: &Env, name: &str, toml: PluginsToml) -> PathBuf {
    toml.write(&env.tmp.path().join(name))
}

fn state_dir(env: &Env) -> PathBuf {
    env.tmp.path().join("plugin-state")
}

/// `ctr run --rm` under the plugin config `config`.
fn ctr_run(
    env: &Env,
    config: &Path,
    id: &str,
    extra: &[&str],
    cmd: &[&str],
) -> std::process::Output {
    let config = config.to_string_lossy();
    let mut args = vec![
        "run",
        "--rm",
        "--runtime",
        NATIVE,
        "--runtime-config-path",
        &config,
    ];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.push(id);
    args.extend_from_slice(cmd);
    env.ctd.ctr(&args)
}

fn cap_mask(status: &str, field: &str) -> u64 {
    capability_mask(status, field).unwrap_or_else(|| {
        panic!(
            "no {field} in in /proc/1/status:
{status}"
        )
    })
}

/// The container's view of its own capabilities, with and without policy.
#[test]
fn the_policy_drops_cap_net_raw_inside_the_container() {
    require_root!();
    let env = containerd();
    let conf = config(
        &env,
        "policy.toml",
        PluginsToml::new(&state_dir(&env)).plugin("security", "rust-policy.wasm", ""),
    );
    let id = unique_id("plug-mut");
    let out = ctr_run(&env, &conf, &id, &[], &["cat", "/proc/1/status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout);
    for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
        assert_eq!(
            cap_mask(&status, field) & CAP_NET_RAW_BIT,
            0,
            "{field} still has CAP_NET_RAW"
        );
    }
    // The same container without the policy has it: the test can fail.
    let plain = env.ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        NATIVE,
        IMAGE,
        &unique_id("plug-plain"),
        "cat",
        "/proc/1/status",
    ]);
    assert_ne!(cap_mask(&plain, "CapBnd:") & CAP_NET_RAW_BIT, 0);
    wait_no_shims(&env.ctd);
    assert_no_leaks(&id);
}

#[test]
fn a_denied_container_fails_with_the_reason_and_leaves_nothing() {
    require_root!();
    let env = containerd();
    let conf = config(
        &env,
        "policy.toml",
        PluginsToml::new(&state_dir(&env)).plugin("security", "rust-policy.wasm", ""),
    );
    let id = unique_id("plug-deny");
    let out = ctr_run(&env, &conf, &id, &["--env", "API_TOKEN=hunter2"], &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "denied by policy security: environment variable API_TOKEN looks like a secret"
        ),
        "{stderr}"
    );
    assert!(env.ctd.ctr_ok(&["task", "ls", "-q"]).trim().is_empty());
    // ctr leaves the container record when the task fails; removing it
    // stops the shim.
    let _ = env.ctd.ctr(&["container", "rm", &id]);
    wait_no_shims(&env.ctd);
    assert_no_leaks(&id);
}

/// The image's registry comes from an annotation under ctr (huskd and CRI
/// set it themselves).
#[test]
fn the_registry_rule_reads_the_image_annotation() {
    require_root!();
    let env = containerd();
    let conf = config(
        &env,
        "policy.toml",
        PluginsToml::new(&state_dir(&env)).plugin(
            "security",
            "rust-policy.wasm",
            &allowed_registries("ghcr.io"),
        ),
    );
    let denied_id = unique_id("plug-reg");
    let denied = ctr_run(
        &env,
        &conf,
        &denied_id,
        &[
            "--annotation",
            "io.husk.image.ref=docker.io/library/busybox:latest",
        ],
        &["true"],
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("is not from an allowed registry (ghcr.io)"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let allowed = ctr_run(
        &env,
        &conf,
        &unique_id("plug-reg"),
        &[
            "--annotation",
            "io.husk.image.ref=ghcr.io/husk/busybox:latest",
        ],
        &["true"],
    );
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let _ = env.ctd.ctr(&["container", "rm", &denied_id]);
    wait_no_shims(&env.ctd);
    assert_no_leaks(&denied_id);
}

#[test]
fn audit_mode_runs_the_container_and_records_the_would_deny() {
    require_root!();
    let env = containerd();
    let conf = config(
        &env,
        "audit.toml",
        PluginsToml::new(&state_dir(&env)).plugin(
            "security",
            "rust-policy.wasm",
            "mode = \"audit\"",
        ),
    );
    let id = unique_id("plug-audit");
    let conf_s = conf.to_string_lossy();
    env.ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        NATIVE,
        "--runtime-config-path",
        &conf_s,
        "--env",
        "DB_PASSWORD=x",
        IMAGE,
        &id,
        "sleep",
        "600",
    ]);
    wait_task_status(&env.ctd, &id, "RUNNING");
    let record_path = env
        .ctd
        .state()
        .join("io.containerd.runtime.v2.task/default")
        .join(&id)
        .join("husk-policy.json");
    let record = std::fs::read_to_string(&record_path).unwrap();
    assert!(
        record.contains("environment variable DB_PASSWORD looks like a secret"),
        "{record}"
    );
    env.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_task_status(&env.ctd, &id, "STOPPED");
    env.ctd.ctr_ok(&["task", "rm", &id]);
    env.ctd.ctr_ok(&["container", "rm", &id]);
    wait_no_shims(&env.ctd);
    assert_no_leaks(&id);
}

/// A plugin that never returns is stopped at its time limit, and its
/// on-error policy decides.
#[test]
fn a_looping_plugin_is_stopped_and_on_error_decides() {
    require_root!();
    let env = containerd();
    for (on_error, allowed) in [("deny", false), ("allow", true)] {
        let conf = config(
            &env,
            &format!("loop-{on_error}.toml"),
            PluginsToml::new(&state_dir(&env)).plugin(
                "looper",
                "wat-loop.wasm",
                &format!("time-limit-ms = 50\non-error = {on_error:?}"),
            ),
        );
        let id = unique_id("plug-loop");
        let t = Instant::now();
        let out = ctr_run(&env, &conf, &id, &[], &["true"]);
        let elapsed = t.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        assert_eq!(
            out.status.success(),
            allowed,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !allowed {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("denied by policy looper"), "{stderr}");
            let _ = env.ctd.ctr(&["container", "rm", &id]);
        }
        assert_no_leaks(&id);
    }
    wait_no_shims(&env.ctd);
}

/// The lifecycle example records starts and exits in its granted store,
/// persisted under the config's state-dir and shared by every shim.
#[test]
fn lifecycle_hooks_see_start_and_exit() {
    require_root!();
    let env = containerd();
    let conf = config(
        &env,
        "lifecycle.toml",
        PluginsToml::new(&state_dir(&env)).plugin(
            "recorder",
            "rust-lifecycle.wasm",
            "grants = [\"store\"]",
        ),
    );
    let ids: Vec<String> = (0..3).map(|_| unique_id("plug-life")).collect();
    for (i, id) in ids.iter().enumerate() {
        let out = ctr_run(&env, &conf, id, &[], &["sh", "-c", &format!("exit {i}")]);
        assert_eq!(out.status.code(), Some(i as i32));
    }
    // Exit hooks run off the reaping path: give them a moment.
    let store = state_dir(&env).join("recorder.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&store).unwrap_or_default();
        if ids.iter().all(|id| text.contains(&format!("exit/{id}"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exits not recorded in {}: {text}",
            store.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let store = husk_plugins::kv::KvStore::persistent(&store);
    let count = |k: &str| i64::from_le_bytes(store.get(k).unwrap().try_into().unwrap());
    assert_eq!(count("starts"), 3);
    assert_eq!(count("exits"), 3);
    let last = String::from_utf8(store.get(&format!("exit/{}", ids[2])).unwrap()).unwrap();
    assert!(last.starts_with("code:2,"), "{last}");
    wait_no_shims(&env.ctd);
}
