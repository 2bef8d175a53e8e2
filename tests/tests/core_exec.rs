//! exec, stats and top in running containers, with the native shim and
//! Debian's runc shim.

mod core_common;

use core_common::{Huskd, IMAGE};
use husk_tests::require_root;

fn exec_stats_top(runtime: &str) {
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--memory",
            "64m",
            IMAGE,
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    d.wait_status(&id, "running");
    let out = d.husk(&[
        "exec",
        "-e",
        "X=42",
        &id,
        "sh",
        "-c",
        "echo x=$X; echo e >&2; exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        husk_tests::command::format_output(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x=42\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "e\n");
    // exec sees the container's filesystem and pid namespace.
    assert_eq!(
        d.husk_ok(&["exec", &id, "cat", "/proc/1/cmdline"]),
        "sleep\u{0}1000\u{0}"
    );
    assert_eq!(
        d.husk_ok(&[
            "exec",
            "-u",
            "1000",
            "-w",
            "/tmp",
            &id,
            "sh",
            "-c",
            "id -u; pwd"
        ]),
        "1000\n/tmp\n"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&d.husk_ok(&["stats", "--format", "json", &id])).unwrap();
    assert_eq!(stats[0]["memory_limit"], 64u64 << 20, "{stats}");
    assert!(stats[0]["memory_usage"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats[0]["pids"].as_u64().unwrap() >= 1, "{stats}");
    let pid = d.inspect(&id)["pid"].as_u64().unwrap();
    let top = d.husk_ok(&["top", &id]);
    assert!(
        top.contains(&pid.to_string()) && top.contains("sleep 1000"),
        "{top}"
    );
    d.husk_ok(&["stop", "-t", "1", &id]);
    d.husk_ok(&["rm", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn exec_stats_and_top_with_the_native_shim() {
    require_root!();
    exec_stats_top("native");
}

#[test]
fn exec_stats_and_top_with_debians_runc_shim() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    exec_stats_top("runc");
}

#[test]
fn exec_in_a_stopped_container_is_refused() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d.husk_ok(&["create", IMAGE, "true"]).trim().to_string();
    let out = d.husk(&["exec", &id, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exec needs a running container"));
}
