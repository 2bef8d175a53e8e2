//! Drives the shim through a private containerd 1.6 for the profile that
//! orders its code (scripts/shim-layout.sh runs it; see
//! shims/shim/layout/README.md):
//!
//!     shim_layout_profile SHIM_DIR BETWEEN_CMD
//!
//! `SHIM_DIR` holds the `containerd-shim-husk-v2` that containerd runs (the
//! script's build with symbols, traced by uprobes).
//!
//! 1. Steady state, what bench `shim_run` measures: `ctr run -d` of a
//!    sleeping busybox (shim start, Create, Start, ...), then `ctr task ls`
//!    (State). Then `BETWEEN_CMD SHIM_PID` runs (the script notes the
//!    daemon's pid and marks the trace).
//! 2. The other requests of a container's life on the same shim: Pids,
//!    Stats, Exec, Pause, Resume, Kill, the exit, Wait, Delete, Shutdown.
//!
//! Run as root.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use husk_tests::{unique_id, Containerd, ContainerdOptions};

const IMAGE: &str = "husk.test/busybox:latest";
const RUNTIME: &str = "io.containerd.husk.v2";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shim_dir, between] = args.as_slice() else {
        eprintln!("usage: shim_layout_profile SHIM_DIR BETWEEN_CMD");
        return ExitCode::from(2);
    };
    if !husk_tests::is_root() {
        eprintln!("shim_layout_profile: run as root (it starts containerd)");
        return ExitCode::from(2);
    }
    let tmp = tempfile::Builder::new()
        .prefix("husk-shim-layout-")
        .tempdir()
        .expect("temp dir");
    let ctd = Containerd::start_with(ContainerdOptions {
        path_prepend: vec![PathBuf::from(shim_dir)],
        ..Default::default()
    });
    ctd.import_busybox(tmp.path());

    // 1. Steady state.
    let id = unique_id("layout");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        &id,
        "/bin/sleep",
        "600",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let tasks = ctd.ctr_ok(&["task", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&id) && l.contains("RUNNING")),
        "task {id} is not running:\n{tasks}"
    );
    let address = ctd.address().to_string_lossy().into_owned();
    let shims: Vec<u32> = husk_tests::leaks::processes_matching(&address)
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim-husk-v2"))
        .map(|p| p.pid)
        .collect();
    let [shim] = shims.as_slice() else {
        panic!("expected one shim, found {shims:?}");
    };
    let status = Command::new("sh")
        .args(["-c", &format!("{between} {shim}")])
        .status()
        .expect("running BETWEEN_CMD");
    assert!(status.success(), "{between} {shim}: {status}");

    // 2. The rest of the container's life.
    ctd.ctr_ok(&["task", "ps", &id]);
    ctd.ctr_ok(&["task", "metrics", &id]);
    ctd.ctr_ok(&["task", "exec", "--exec-id", "e1", &id, "/bin/true"]);
    ctd.ctr_ok(&["task", "pause", &id]);
    ctd.ctr_ok(&["task", "resume", &id]);
    ctd.ctr_ok(&["task", "kill", "--signal", "SIGTERM", &id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctd.ctr(&["task", "delete", &id]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "task {id} did not stop");
        let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
        std::thread::sleep(Duration::from_millis(200));
    }
    ctd.ctr_ok(&["container", "delete", &id]);
    // Let the shim's Shutdown finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    while husk_tests::leaks::processes_matching(&address)
        .iter()
        .any(|p| p.cmdline.contains("containerd-shim-husk-v2"))
    {
        if Instant::now() > deadline {
            eprintln!("shim_layout_profile: shims still running after 60 s");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ExitCode::SUCCESS
}
