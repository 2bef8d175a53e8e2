//! Container churn: N containers started, listed and removed through huskd,
//! with the throughput of each phase and huskd's resident memory; the same
//! through containerd + containerd-shim-runc-v2 with `ctr` for comparison.
//!
//! ```text
//! cargo build --release -p husk-core -p husk-shim
//! cargo bench -p husk-tests --bench huskd_churn            # as root
//! CHURN_COUNT=50 CHURN_CTR=0 cargo bench -p husk-tests --bench huskd_churn
//! ```
//!
//! Phases, one client command at a time (what a script driving the CLI
//! gets), each container running `/bin/sleep 600` in husk's busybox image:
//! - start: `husk run -d IMAGE /bin/sleep 600`, N times
//!   (ctr: `ctr run -d IMAGE ID /bin/sleep 600`);
//! - list: `husk ps -a` (ctr: `ctr task ls`), LIST_ROUNDS times with all N
//!   there; the median, as containers listed per second;
//! - remove: `husk rm -f ID`, N times (ctr: `ctr task delete --force ID`
//!   then `ctr container delete ID`, two commands, as ctr has no single
//!   one).
//!
//! Memory: the daemon's VmRSS (from /proc/PID/status) before the first
//! start, its peak (sampled every 5 ms through all phases), and after the
//! last removal; plus the shims' summed VmRSS with all N running (huskd's
//! spare shim, which serves no container, is not counted).
//! Afterwards nothing may be left: no container record, no shim, no mount,
//! no cgroup of a container. `CHURN_COUNT` (default 200) sets N;
//! `CHURN_CTR=0` skips containerd.

use std::collections::BTreeSet;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_tests::huskd::{proc_status_kb, Huskd, HuskdOptions, IMAGE};
use husk_tests::stats::{self, Summary};
use husk_tests::{command, leaks, unique_id, Containerd, ImageBuilder};

const DEFAULT_COUNT: usize = 200;
const LIST_ROUNDS: usize = 5;
const CTR_IMAGE: &str = "husk.test/busybox:latest";
const SLEEP: [&str; 2] = ["/bin/sleep", "600"];

/// The highest VmRSS of a process, sampled every 5 ms on a thread.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = proc_status_kb(pid, "VmRSS") {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak in kB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// One system's figures.
struct Churn {
    name: &'static str,
    n: usize,
    start: Duration,
    list: Summary,
    remove: Duration,
    rss_before_kb: u64,
    rss_peak_kb: u64,
    rss_after_kb: u64,
    shims_rss_kb: u64,
    shims: usize,
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("huskd_churn: not started with --bench; run `cargo bench -p husk-tests --bench huskd_churn`");
        return ExitCode::SUCCESS;
    }
    if !husk_tests::is_root() {
        eprintln!("huskd_churn: needs root (huskd mounts overlays and creates namespaces)");
        return ExitCode::FAILURE;
    }
    let n = match stats::count_from_env("CHURN_COUNT", DEFAULT_COUNT) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("huskd_churn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let with_ctr = std::env::var("CHURN_CTR").map_or(true, |v| v != "0");
    println!("huskd_churn: {n} containers of `/bin/sleep 600` started, listed and removed, one client command at a time");
    stats::print_load();

    let mut results = Vec::new();
    match churn_huskd(n) {
        Ok(r) => results.push(r),
        Err(e) => {
            eprintln!("huskd_churn: huskd: {e}");
            return ExitCode::FAILURE;
        }
    }
    if with_ctr {
        husk_tests::require_command("containerd-shim-runc-v2");
        match churn_containerd(n) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("huskd_churn: containerd: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    stats::print_load();
    report(&results);
    ExitCode::SUCCESS
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn report(results: &[Churn]) {
    println!();
    println!(
        "{:<26} {:>10} {:>10} {:>10}   {:>9} {:>9} {:>9}   {:>12}",
        "system", "start/s", "list/s", "remove/s", "RSS0 MB", "peak MB", "after MB", "shims MB"
    );
    for r in results {
        println!(
            "{:<26} {:>10.1} {:>10.0} {:>10.1}   {:>9.1} {:>9.1} {:>9.1}   {:>6.1} ({:>3})",
            r.name,
            per_sec(r.n, r.start),
            r.n as f64 / (r.list.median / 1e3),
            per_sec(r.n, r.remove),
            r.rss_before_kb as f64 / 1024.0,
            r.rss_peak_kb as f64 / 1024.0,
            r.rss_after_kb as f64 / 1024.0,
            r.shims_rss_kb as f64 / 1024.0,
            r.shims,
        );
    }
    println!();
    for r in results {
        println!(
            "{}: start {:.2} s ({:.1} ms each), list of {} {:.1} ms (median of {LIST_ROUNDS}), \
             remove {:.2} s ({:.1} ms each)",
            r.name,
            r.start.as_secs_f64(),
            r.start.as_secs_f64() * 1e3 / r.n as f64,
            r.n,
            r.list.median,
            r.remove.as_secs_f64(),
            r.remove.as_secs_f64() * 1e3 / r.n as f64,
        );
    }
    println!(
        "RSS: the daemon's VmRSS before the first start, its peak (sampled every 5 ms), after \
         the last removal; shims MB: VmRSS summed over the shims with all containers running \
         (count in parentheses; shared pages counted once per shim)"
    );
    if let [husk, ctd] = results {
        println!(
            "\nhusk / containerd throughput: start {:.2}x, list {:.2}x, remove {:.2}x",
            ctd.start.as_secs_f64() / husk.start.as_secs_f64(),
            ctd.list.median / husk.list.median,
            ctd.remove.as_secs_f64() / husk.remove.as_secs_f64()
        );
    }
}

/// Runs `cmd`, which must exit 0; its stdout.
fn ok(mut cmd: Command) -> Result<String, String> {
    let out = command::try_output_timeout(&mut cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            command::describe(&cmd),
            command::format_output(&out)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Summed VmRSS (kB) and count of the shim processes whose command line
/// holds `address` and that `counts` (the shims serving the containers, or
/// those that are not huskd's spares, which serve none).
fn shims_rss(address: &str, counts: impl Fn(&leaks::ProcessInfo) -> bool) -> (u64, usize) {
    let shims: Vec<u32> = leaks::processes_matching(address)
        .into_iter()
        .filter(|p| p.cmdline.contains("shim") && counts(p))
        .map(|p| p.pid)
        .collect();
    let kb = shims
        .iter()
        .filter_map(|&pid| proc_status_kb(pid, "VmRSS"))
        .sum();
    (kb, shims.len())
}

/// Whether a shim serves one of `ids` (`-id <id>` on its command line).
fn serving(ids: &[String]) -> impl Fn(&leaks::ProcessInfo) -> bool + '_ {
    |p| {
        let args: Vec<&str> = p.cmdline.split_whitespace().collect();
        args.windows(2)
            .any(|w| w[0] == "-id" && ids.iter().any(|id| id == w[1]))
    }
}

/// Times `LIST_ROUNDS` runs of a listing command that must show `n` lines
/// naming containers (`count` counts them in its output).
fn time_list(
    n: usize,
    mut make: impl FnMut() -> Command,
    count: impl Fn(&str) -> usize,
) -> Result<Summary, String> {
    let mut samples = Vec::new();
    for _ in 0..LIST_ROUNDS {
        let began = Instant::now();
        let out = ok(make())?;
        samples.push(began.elapsed());
        let listed = count(&out);
        if listed != n {
            return Err(format!(
                "the listing shows {listed} containers, not {n}:\n{out}"
            ));
        }
    }
    Ok(Summary::of(&samples).expect("LIST_ROUNDS > 0"))
}

fn churn_huskd(n: usize) -> Result<Churn, String> {
    let huskd = Huskd::start_with_options(HuskdOptions {
        debug: false,
        ..Default::default()
    });
    huskd.import_busybox();
    let pid = huskd.pid();
    let address = huskd.socket.to_string_lossy().into_owned();
    // One container first, so that "before" is a daemon that has served a
    // run (its pools and caches warm), as the peak is.
    ok(huskd.husk_cmd(&["run", "--rm", IMAGE, "/bin/true"]))?;
    let rss_before_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let sampler = RssPeak::start(pid);

    let mut ids = Vec::with_capacity(n);
    let began = Instant::now();
    for _ in 0..n {
        let out = ok(huskd.husk_cmd(&[&["run", "-d", IMAGE][..], &SLEEP].concat()))?;
        // The id is the last line `run -d` prints.
        let id = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        ids.push(id.trim().to_string());
    }
    let start = began.elapsed();
    let spares = || -> Vec<u32> { huskd.spare_shims().into_iter().map(|s| s.1).collect() };
    let (shims_rss_kb, shims) = shims_rss(&address, serving(&ids));

    // Every row of the table but its header names a container.
    let list = time_list(
        n,
        || huskd.husk_cmd(&["ps", "-a"]),
        |out| out.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
    )?;

    let began = Instant::now();
    for id in &ids {
        ok(huskd.husk_cmd(&["rm", "-f", id]))?;
    }
    let remove = began.elapsed();
    let rss_peak_kb = sampler.finish();
    let rss_after_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);

    // Nothing left: records, shims, mounts, cgroups.
    let mut left = Vec::new();
    let listed = huskd.container_ids();
    if !listed.is_empty() {
        left.push(format!("{} containers still listed", listed.len()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut now = Vec::new();
        let spares = spares();
        let (_, shims_left) = shims_rss(&address, |p| !spares.contains(&p.pid));
        if shims_left > 0 {
            now.push(format!("{shims_left} shims"));
        }
        let mounts = leaks::mount_points_under(huskd.tmp.path());
        if !mounts.is_empty() {
            now.push(format!("mounts {mounts:?}"));
        }
        let idset: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let cgroups: Vec<_> = leaks::cgroup_dirs_matching("husk-")
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str()?.strip_prefix("husk-"))
                    .is_some_and(|id| idset.contains(id))
            })
            .collect();
        if !cgroups.is_empty() {
            now.push(format!("cgroups {cgroups:?}"));
        }
        if now.is_empty() || Instant::now() >= deadline {
            left.extend(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !left.is_empty() {
        return Err(format!(
            "left behind after removing all: {}",
            left.join("; ")
        ));
    }
    Ok(Churn {
        name: "huskd (native shim)",
        n,
        start,
        list,
        remove,
        rss_before_kb,
        rss_peak_kb,
        rss_after_kb,
        shims_rss_kb,
        shims,
    })
}

fn churn_containerd(n: usize) -> Result<Churn, String> {
    let ctd = Containerd::start();
    let tmp = tempfile::Builder::new()
        .prefix("husk-bench-churn-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let tar = tmp.path().join("busybox.tar");
    ImageBuilder::busybox().write_tar(&tar);
    ctd.import_image(&tar, "husk.test/busybox");
    let pid = ctd.pid().ok_or("containerd is not running")?;
    let address = ctd.address().to_string_lossy().into_owned();
    let ctr = |args: &[&str]| {
        let mut c = ctd.ctr_cmd();
        c.args(args);
        c
    };
    let warm = unique_id("bench-churn");
    ok(ctr(&["run", "--rm", CTR_IMAGE, &warm, "/bin/true"]))?;
    let rss_before_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let sampler = RssPeak::start(pid);

    let mut ids = Vec::with_capacity(n);
    let began = Instant::now();
    for _ in 0..n {
        let id = unique_id("bench-churn");
        ok(ctr(&[&["run", "-d", CTR_IMAGE, &id][..], &SLEEP].concat()))?;
        ids.push(id);
    }
    let start = began.elapsed();
    let (shims_rss_kb, shims) = shims_rss(&address, serving(&ids));

    let list = time_list(
        n,
        || ctr(&["task", "ls"]),
        |out| {
            out.lines()
                .skip(1)
                .filter(|l| l.contains("RUNNING"))
                .count()
        },
    )?;

    let began = Instant::now();
    for id in &ids {
        ok(ctr(&["task", "delete", "--force", id]))?;
        ok(ctr(&["container", "delete", id]))?;
    }
    let remove = began.elapsed();
    let rss_peak_kb = sampler.finish();
    let rss_after_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);

    let mut left = Vec::new();
    let listed = ok(ctr(&["container", "ls", "-q"]))?;
    if !listed.trim().is_empty() {
        left.push(format!("containers still listed: {}", listed.trim()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut now = Vec::new();
        let (_, shims_left) = shims_rss(&address, |_| true);
        if shims_left > 0 {
            now.push(format!("{shims_left} shims"));
        }
        let mounts = leaks::mount_points_under(ctd.dir());
        if !mounts.is_empty() {
            now.push(format!("mounts {mounts:?}"));
        }
        if now.is_empty() || Instant::now() >= deadline {
            left.extend(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !left.is_empty() {
        return Err(format!(
            "left behind after removing all: {}",
            left.join("; ")
        ));
    }
    Ok(Churn {
        name: "containerd (runc shim)",
        n,
        start,
        list,
        remove,
        rss_before_kb,
        rss_peak_kb,
        rss_after_kb,
        shims_rss_kb,
        shims,
    })
}
