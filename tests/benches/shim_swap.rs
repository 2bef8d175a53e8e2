//! The cost of a live shim swap (issue 7), under containerd 1.6.
//!
//! ```text
//! cargo build --release -p husk-shim
//! cargo bench -p husk-tests --bench shim_swap          # as root
//! BENCH_ITERS=20 cargo bench -p husk-tests --bench shim_swap
//! ```
//!
//! One container counts (a line every 10 ms, through `ctr run`, which
//! reads the FIFOs), a client calls Task.State on the shim's socket back
//! to back, and the shim is swapped 100 times (`upgrade`, alternating two
//! copies of the binary). Reported:
//!
//! - the API gap: per swap, the longest a State call went unanswered,
//!   median and p99 over the swaps (target: p99 <= 20 ms), next to the
//!   same client's call latency without swaps;
//! - the pause the successor reports (swap start to serving);
//! - the workload's cost: the counter line that came latest after its
//!   predecessor, during the swaps and during as long a quiet period.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use husk_tests::runtime_bin::profile_dir_of;
use husk_tests::stats::{bench_rounds, percentile, print_load};
use husk_tests::{unique_id, Containerd, ContainerdOptions};

const IMAGE: &str = "husk.test/busybox:latest";
const RUNTIME: &str = "io.containerd.husk.v2";
const SHIM: &str = "containerd-shim-husk-v2";

fn main() -> ExitCode {
    let swaps = match bench_rounds("shim_swap", "it runs containerd and containers", 100) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = profile_dir_of(&exe);
    if !dir.join(SHIM).is_file() {
        eprintln!(
            "{SHIM} not found in {}: `cargo build --release -p husk-shim` first",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let tmp = tempfile::Builder::new()
        .prefix("husk-bench-swap-")
        .tempdir()
        .unwrap();
    let ctd = Containerd::start_with(ContainerdOptions {
        path_prepend: vec![dir.clone()],
        ..Default::default()
    });
    ctd.import_busybox(tmp.path());
    let binaries = [dir.join(SHIM), copy_of(&dir.join(SHIM), tmp.path())];

    let id = unique_id("bench-swap");
    let mut counter = ctd
        .ctr_cmd()
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, &id])
        .args([
            "/bin/sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); usleep 10000; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    {
        let out = counter.stdout.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let n = l.trim().parse().unwrap_or(u64::MAX);
                lines.lock().unwrap().push((Instant::now(), n));
            }
        });
    }
    let address = wait_address(&ctd, &id);
    let calls: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (calls, stop, id) = (calls.clone(), stop.clone(), id.clone());
        std::thread::spawn(move || {
            let client = containerd_shim_protos::TaskClient::new(
                ttrpc::Client::connect(&address).expect("connecting to the shim"),
            );
            let req = api::StateRequest {
                id,
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let r = client.state(ttrpc::context::with_timeout(30_000_000_000), &req);
                let took = began.elapsed();
                r.expect("Task.State failed during the swaps");
                calls.lock().unwrap().push((began, took));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // Quiet: as long as the swaps will take, roughly.
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let quiet_to = Instant::now();

    let mut windows = Vec::with_capacity(swaps);
    let mut pauses = Vec::with_capacity(swaps);
    let swaps_from = Instant::now();
    for i in 0..swaps {
        let bin = &binaries[i % 2];
        let t0 = Instant::now();
        let out = upgrade(&ctd, &id, bin);
        let t1 = Instant::now();
        assert!(
            out.status.success(),
            "swap {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pauses.push(paused_ms(&String::from_utf8_lossy(&out.stdout)));
        windows.push((t0, t1));
        // Let the client get a few answers between swaps.
        std::thread::sleep(Duration::from_millis(20));
    }
    let swaps_to = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    caller.join().unwrap();

    let calls = calls.lock().unwrap().clone();
    let gap_of = |(t0, t1): (Instant, Instant)| -> f64 {
        calls
            .iter()
            .filter(|(b, d)| *b < t1 && *b + *d > t0)
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .fold(0.0, f64::max)
    };
    let mut gaps: Vec<f64> = windows.iter().map(|w| gap_of(*w)).collect();
    gaps.sort_by(f64::total_cmp);
    let mut quiet: Vec<f64> = calls
        .iter()
        .filter(|(b, _)| *b >= quiet_from && *b < quiet_to)
        .map(|(_, d)| d.as_secs_f64() * 1e3)
        .collect();
    quiet.sort_by(f64::total_cmp);
    pauses.sort_by(f64::total_cmp);

    let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
    let _ = counter.wait();
    let lines = lines.lock().unwrap().clone();
    let in_order = lines.windows(2).all(|w| w[1].1 == w[0].1 + 1);
    let worst = |from: Instant, to: Instant| -> (f64, u64) {
        lines
            .windows(2)
            .filter(|w| w[1].0 >= from && w[1].0 < to)
            .map(|w| ((w[1].0 - w[0].0).as_secs_f64() * 1e3, w[1].1))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    };
    let (quiet_line, quiet_n) = worst(quiet_from, quiet_to);
    let (swap_line, swap_n) = worst(swaps_from, swaps_to);

    println!(
        "live shim swap, {swaps} swaps ({} build)",
        dir.file_name().unwrap().to_string_lossy()
    );
    print_load();
    println!(
        "Task.State without swaps ({} calls): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quiet.len(),
        percentile(&quiet, 50.0),
        percentile(&quiet, 99.0),
        quiet[quiet.len() - 1]
    );
    println!(
        "API gap per swap (longest unanswered Task.State): median {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 20 ms)",
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
        gaps[gaps.len() - 1]
    );
    println!(
        "swap start (probe included) to the successor serving, as it reports: median {:.2} ms, p99 {:.2} ms",
        percentile(&pauses, 50.0),
        percentile(&pauses, 99.0)
    );
    println!(
        "counter (a line every 10 ms): largest gap between lines during the swaps {swap_line:.1} ms (line {swap_n}), \
         during as long without swaps {quiet_line:.1} ms (line {quiet_n}); {} lines, {}",
        lines.len(),
        if in_order { "no gap, no duplicate" } else { "OUT OF ORDER" }
    );
    ExitCode::SUCCESS
}

fn copy_of(bin: &Path, dir: &Path) -> PathBuf {
    let d = dir.join("v2");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(SHIM);
    std::fs::copy(bin, &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn upgrade(ctd: &Containerd, id: &str, bin: &Path) -> std::process::Output {
    let dir = profile_dir_of(&std::env::current_exe().unwrap());
    Command::new(dir.join(SHIM))
        .arg("-namespace")
        .arg("default")
        .arg("-address")
        .arg(ctd.address())
        .args(["-id", id, "upgrade", "-binary"])
        .arg(bin)
        .output()
        .unwrap()
}

/// "paused 3.2 ms" from `upgrade`'s report.
fn paused_ms(report: &str) -> f64 {
    report
        .split("paused ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn wait_address(ctd: &Containerd, id: &str) -> String {
    let path = ctd
        .state()
        .join("io.containerd.runtime.v2.task/default")
        .join(id)
        .join("address");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(&path) {
            let out = ctd.ctr(&["task", "ls"]);
            if String::from_utf8_lossy(&out.stdout).contains("RUNNING") {
                return a.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "the counter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}
