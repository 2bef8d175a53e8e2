//! Must show (issue 7, under huskd): `husk shim upgrade` swaps a running
//! container's shim twenty times in a row while it writes a counter line
//! every 10 ms: its pid and its shim's pid never change, `husk ps` shows
//! it running throughout, its log has no gap and no duplicate, and stop,
//! exec and stats work after; `husk shim ls` shows binary, version, pid,
//! uptime and swaps; a native -> hardened swap says it applies to future
//! execs; a broken binary is refused.
//!
//! And (issue 4): output a container writes just before it exits while
//! huskd is down is not lost (the shim keeps its FIFO reader until
//! Delete).

mod core_common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use core_common::{alive, bin_dir, Huskd, IMAGE};
use husk_tests::http_poll::{http_get, Poller};
use husk_tests::require_root;

const COUNTER: &str = "i=0; while true; do echo $i; i=$((i+1)); usleep 10000; done";
const HTTPD: &str =
    "mkdir -p /tmp/www && echo husk-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";

fn shim_ls(d: &Huskd) -> Vec<serde_json::Value> {
    let out = d.husk_ok(&["--format", "json", "shim", "ls"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn log_lines(d: &Huskd, id: &str) -> Vec<String> {
    d.husk_ok(&["logs", id]).lines().map(String::from).collect()
}

#[test]
fn husk_shim_upgrade_twenty_times_under_a_counter() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sh", "-c", COUNTER])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_lines(&d, &id).len() < 5 {
        assert!(Instant::now() < deadline, "the counter does not count");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    // An HTTP server in its container's own network namespace, polled
    // from inside that namespace (huskd leaves its loopback down: the
    // test brings it up).
    let web = d
        .husk_ok(&["run", "-d", IMAGE, "sh", "-c", HTTPD])
        .trim()
        .to_string();
    let web_pid = d.inspect(&web)["pid"].as_u64().unwrap() as u32;
    let netns = std::path::PathBuf::from(format!("/proc/{web_pid}/ns/net"));
    husk_tests::host::bring_up_loopback_of(web_pid);
    {
        let ns = std::fs::File::open(&netns).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while let Err(e) = http_get() {
                assert!(Instant::now() < deadline, "httpd does not answer: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .join()
        .unwrap();
    }
    let poller = Poller::start(&netns);
    let before: Vec<_> = shim_ls(&d)
        .into_iter()
        .filter(|s| s["container"] == id.as_str())
        .collect();
    assert_eq!(before.len(), 1, "{before:?}");
    let shim_pid = before[0]["pid"].as_u64().unwrap();
    assert!(before[0]["swappable"].as_bool().unwrap());
    assert_eq!(before[0]["swaps"], 0);
    assert!(before[0]["binary"]
        .as_str()
        .unwrap()
        .ends_with("containerd-shim-husk-v2"));
    let table = d.husk_ok(&["shim", "ls"]);
    for col in ["PID", "BINARY", "VERSION", "UPTIME"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains(&shim_pid.to_string()), "{table}");

    // `husk ps` shows it running throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let socket = d.socket.clone();
        let short = id[..12].to_string();
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(bin_dir().join("husk"))
                    .arg("--socket")
                    .arg(&socket)
                    .arg("ps")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if !out.status.success()
                    || !text
                        .lines()
                        .any(|l| l.contains(&short) && l.contains("running"))
                {
                    bad.push(text);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bad
        })
    };
    for round in 1..=20 {
        for c in [&id, &web] {
            let out = d.husk_ok(&["shim", "upgrade", c]);
            assert!(
                out.contains("swapped live") && out.contains(&format!("swap #{round},")),
                "{out}"
            );
        }
    }
    let (ok, failures) = poller.finish();
    assert!(
        failures.is_empty(),
        "HTTP requests failed during the swaps: {failures:?}"
    );
    assert!(ok > 20, "only {ok} HTTP requests answered");
    assert_eq!(d.inspect(&web)["pid"].as_u64().unwrap() as u32, web_pid);
    d.husk_ok(&["rm", "-f", &web]);
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(bad.is_empty(), "husk ps did not show it running: {bad:?}");
    assert_eq!(d.inspect(&id)["pid"].as_u64().unwrap() as u32, pid);
    assert!(alive(pid));
    let after = shim_ls(&d);
    assert_eq!(after[0]["pid"].as_u64().unwrap(), shim_pid);
    assert_eq!(after[0]["swaps"], 20);

    // Native -> hardened: allowed, and said to apply to future execs.
    let out = d.husk_ok(&["shim", "upgrade", "--binary", "hardened", &id]);
    assert!(
        out.contains("(hardened)") && out.contains("from now on"),
        "{out}"
    );
    assert_eq!(shim_ls(&d)[0]["profile"], "hardened");
    // A broken binary is refused; the shim serves on.
    let broken = d.tmp.path().join("broken-shim");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = d.husk(&["shim", "upgrade", "--binary", broken.to_str().unwrap(), &id]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not swapped") && text.contains("probe"),
        "{text}"
    );

    // Everything still works after the swaps.
    let e = d.husk_ok(&["exec", &id, "echo", "from-exec"]);
    assert_eq!(e, "from-exec\n");
    let stats = d.husk_ok(&["--format", "json", "stats", &id]);
    assert!(stats.contains("memory"), "{stats}");
    d.husk_ok(&["stop", "-t", "1", &id]);
    let lines = log_lines(&d, &id);
    assert!(lines.len() >= 50, "only {} lines", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l.trim(),
            i.to_string(),
            "log line {i}: a gap or a duplicate"
        );
    }
    d.husk_ok(&["rm", &id]);
    assert!(shim_ls(&d).is_empty());
}

#[test]
fn output_written_before_an_exit_while_huskd_is_down_is_kept() {
    require_root!();
    let mut d = Huskd::start();
    d.import_busybox();
    let cmd = "echo one; while [ ! -e /tmp/go ]; do usleep 20000; done; echo two; exit 3";
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sh", "-c", cmd])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.husk_ok(&["logs", &id]) != "one\n" {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    d.kill9();
    // The container writes its last line and exits while nobody reads.
    std::fs::write(d.bundle(&id).join("rootfs/tmp/go"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the container did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    d.spawn();
    d.wait_status(&id, "stopped");
    assert_eq!(d.husk_ok(&["logs", &id]), "one\ntwo\n");
    assert_eq!(d.inspect(&id)["exit_code"], 3);
    d.husk_ok(&["rm", &id]);
}
