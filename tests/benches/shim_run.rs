//! `ctr run --rm` of /bin/true through containerd 1.6: husk's shim against
//! containerd-shim-runc-v2 (with runc), side by side in one run, plus the
//! resident memory and thread count of each shim per container.
//!
//! ```text
//! cargo build --release -p husk-shim -p husk-runtime
//! cargo bench -p husk-tests --bench shim_run          # as root
//! BENCH_ITERS=50 cargo bench -p husk-tests --bench shim_run
//! ```
//!
//! Round-robin, starting with a different contender each round. Timed is
//! the whole `ctr run --rm` (client, containerd, shim start, create, start,
//! wait, delete, shim shutdown). Memory: five `ctr run -d` containers of
//! `sleep` per shim, each shim serving its running container, then the
//! mean VmRSS (with its RssAnon and RssFile parts), Pss and Threads of the
//! shim processes from /proc, and where one shim's resident pages are (per
//! mapping, from /proc/PID/smaps). Each is the long-lived shim process
//! itself: husk's short-lived workers (forked for create, start, delete and
//! the other runtime calls) have exited by then, as runc has for runc's
//! shim. The husk shim is `target/release/containerd-shim-husk-v2`
//! (next to this bench executable). The load average is printed before and
//! after: the machine is shared.
//!
//! `SHIM_RUN_BASELINE=DIR` adds a third contender, "husk base": the
//! `containerd-shim-husk-v2` in DIR (another build, e.g. a copy saved
//! before a change), run as runtime `io.containerd.huskbase.v2` in the
//! same rounds, so two builds compare on one machine state.
//!
//! The hot layout (shims/shim/layout/README.md): the bench first prints how
//! many of the functions listed in `shims/shim/layout/hot.txt` the measured
//! binary's link matched (from the link map the shim's build script has the
//! linker write) and the size of the cluster, `.text.husk_hot`, so a stale
//! list shows here instead of as a slowly growing RSS.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use husk_tests::runtime_bin::profile_dir_of;
use husk_tests::stats::Summary;
use husk_tests::{unique_id, Containerd, ContainerdOptions};

const DEFAULT_ITERS: usize = 30;
const IMAGE: &str = "husk.test/busybox:latest";
const CONTENDERS: [(&str, &str); 2] = [
    ("husk shim", "io.containerd.husk.v2"),
    ("runc shim", "io.containerd.runc.v2"),
];
const BASELINE: (&str, &str) = ("husk base", "io.containerd.huskbase.v2");

fn main() -> ExitCode {
    if !husk_tests::is_root() {
        eprintln!("SKIP: shim_run needs root");
        return ExitCode::SUCCESS;
    }
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = profile_dir_of(&exe);
    if !dir.join("containerd-shim-husk-v2").is_file() {
        eprintln!(
            "containerd-shim-husk-v2 not found in {}: `cargo build --release -p husk-shim` first",
            dir.display()
        );
        return ExitCode::from(2);
    }
    husk_tests::require_command("containerd-shim-runc-v2");
    println!("{}", hot_layout(&dir.join("containerd-shim-husk-v2")));
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERS);
    let tmp = tempfile::Builder::new()
        .prefix("husk-bench-shim-")
        .tempdir()
        .unwrap();
    let mut contenders = CONTENDERS.to_vec();
    let mut path_prepend = vec![dir.clone()];
    if let Some(base) = std::env::var_os("SHIM_RUN_BASELINE") {
        let bin = std::path::Path::new(&base).join("containerd-shim-husk-v2");
        assert!(bin.is_file(), "SHIM_RUN_BASELINE: no {}", bin.display());
        let linked = tmp.path().join("baseline-bin");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(&bin, linked.join("containerd-shim-huskbase-v2")).unwrap();
        path_prepend.push(linked);
        contenders.push(BASELINE);
    }
    let ctd = Containerd::start_with(ContainerdOptions {
        path_prepend,
        ..Default::default()
    });
    ctd.import_busybox(tmp.path());
    husk_tests::stats::print_load();

    // Warm up both (page cache, snapshot).
    for (_, runtime) in &contenders {
        for _ in 0..2 {
            run_once(&ctd, runtime);
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for round in 0..iters {
        for k in 0..contenders.len() {
            let i = (round + k) % contenders.len();
            samples[i].push(run_once(&ctd, contenders[i].1));
        }
    }
    println!("ctr run --rm of /bin/true, {iters} runs each (ms)");
    println!(
        "{:<12} {:>8} {:>8} {:>8}",
        "contender", "median", "p10", "p90"
    );
    let summaries: Vec<Summary> = samples.iter().map(|s| Summary::of(s).unwrap()).collect();
    for ((name, _), s) in contenders.iter().zip(&summaries) {
        println!("{name:<12} {:>8.1} {:>8.1} {:>8.1}", s.median, s.p10, s.p90);
    }
    println!(
        "husk / runc shim: {:.2} (target <= 0.75)",
        summaries[0].median / summaries[1].median
    );
    if let Some(base) = summaries.get(2) {
        println!(
            "husk shim / husk base: {:.2}",
            summaries[0].median / base.median
        );
    }

    println!("\nper-container shim footprint (5 sleeping containers per runtime, means)");
    println!(
        "{:<12} {:>9} {:>10} {:>10} {:>9} {:>8}",
        "shim", "VmRSS MB", "RssAnon MB", "RssFile MB", "Pss MB", "threads"
    );
    let mut rss = Vec::new();
    for (name, runtime) in &contenders {
        let f = footprint(&ctd, runtime);
        println!(
            "{name:<12} {:>9.1} {:>10.1} {:>10.1} {:>9.1} {:>8.1}",
            f.rss, f.anon, f.file, f.pss, f.threads
        );
        println!(
            "             resident kB by mapping (one shim): {}",
            f.mappings
        );
        rss.push(f.rss);
    }
    println!(
        "husk / runc shim VmRSS: {:.2} (target: husk <= 3 MB)",
        rss[0] / rss[1]
    );
    husk_tests::stats::print_load();
    ExitCode::SUCCESS
}

fn run_once(ctd: &Containerd, runtime: &str) -> Duration {
    let id = unique_id("bench-shim");
    let began = Instant::now();
    let out = ctd.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, &id, "/bin/true"]);
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{runtime}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Means over the shims of one runtime. VmRSS = RssAnon + RssFile (+
/// RssShmem, none here). RssFile counts the pages of the binary and its
/// libraries mapped in the process (the kernel maps 64 KiB around each
/// page fault), which the page cache shares between all shims of one
/// binary; RssAnon is what each shim has to itself; Pss splits shared
/// pages between their users.
struct Footprint {
    rss: f64,
    anon: f64,
    file: f64,
    pss: f64,
    threads: f64,
    /// One shim's resident kB per mapping, largest first.
    mappings: String,
}

/// The mean footprint of the shims of five sleeping containers of
/// `runtime`.
fn footprint(ctd: &Containerd, runtime: &str) -> Footprint {
    let ids: Vec<String> = (0..5).map(|_| unique_id("bench-foot")).collect();
    for id in &ids {
        ctd.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            IMAGE,
            id,
            "/bin/sleep",
            "600",
        ]);
    }
    std::thread::sleep(Duration::from_millis(500));
    // Each shim measured serves a running container.
    let tasks = ctd.ctr_ok(&["task", "ls"]);
    for id in &ids {
        assert!(
            tasks
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING")),
            "{runtime}: task {id} is not running:\n{tasks}"
        );
    }
    let bin = match runtime {
        r if r == BASELINE.1 => "containerd-shim-huskbase-v2",
        r if r.contains("husk") => "containerd-shim-husk-v2",
        _ => "containerd-shim-runc-v2",
    };
    let address = ctd.address().to_string_lossy().into_owned();
    let shims: Vec<u32> = husk_tests::leaks::processes_matching(&address)
        .into_iter()
        .filter(|p| p.cmdline.contains(bin))
        .map(|p| p.pid)
        .collect();
    let mut sum = Footprint {
        rss: 0.0,
        anon: 0.0,
        file: 0.0,
        pss: 0.0,
        threads: 0.0,
        mappings: shims.first().map(|&p| mappings(p)).unwrap_or_default(),
    };
    for pid in &shims {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |text: &str, name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        sum.rss += field(&status, "VmRSS:") / 1024.0;
        sum.anon += field(&status, "RssAnon:") / 1024.0;
        sum.file += field(&status, "RssFile:") / 1024.0;
        sum.pss += field(&rollup, "Pss:") / 1024.0;
        sum.threads += field(&status, "Threads:");
    }
    let n = shims.len().max(1) as f64;
    assert_eq!(shims.len(), ids.len(), "one {bin} per container");
    for id in &ids {
        let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    }
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ctd.ctr(&["task", "delete", id]).status.code() != Some(0) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = ctd.ctr(&["container", "delete", id]);
    }
    Footprint {
        rss: sum.rss / n,
        anon: sum.anon / n,
        file: sum.file / n,
        pss: sum.pss / n,
        threads: sum.threads / n,
        mappings: sum.mappings,
    }
}

/// Resident kB of `pid` per mapping (the file's name with its permissions,
/// or `[heap]`, `[stack]`, `[anon]`), largest first, e.g. `binary r-xp 700,
/// libc.so.6 r-xp 580, [heap] 300, ...`.
fn mappings(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: Vec<(String, u64)> = Vec::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let perms = fields.get(1).copied().unwrap_or("");
            current = match fields.get(5) {
                Some(path) if path.starts_with('[') => (*path).to_string(),
                Some(path) => {
                    let file = path.rsplit('/').next().unwrap_or(path);
                    format!("{file} {perms}")
                }
                None => "[anon]".to_string(),
            };
        } else if fields.first() == Some(&"Rss:") {
            let kb: u64 = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match by.iter_mut().find(|(n, _)| *n == current) {
                Some((_, total)) => *total += kb,
                None => by.push((current.clone(), kb)),
            }
        }
    }
    by.retain(|(_, kb)| *kb > 0);
    by.sort_by_key(|e| std::cmp::Reverse(e.1));
    by.iter()
        .map(|(n, kb)| format!("{n} {kb}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many of the globs in `shims/shim/layout/hot.txt` matched a function
/// in the link of `bin`, and the size of its `.text.husk_hot`: read from
/// the link map the shim's build script has the linker write into its
/// `OUT_DIR` (the newest one under the profile's `build/husk-shim-*`, checked
/// against the binary's own section size).
fn hot_layout(bin: &std::path::Path) -> String {
    let list_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shims/shim/layout/hot.txt");
    let list = std::fs::read_to_string(&list_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", list_path.display()));
    let globs: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let name = bin.file_name().unwrap().to_string_lossy();
    let build = bin.parent().unwrap().join("build");
    let map = std::fs::read_dir(&build)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("husk-shim-"))
        .map(|e| e.path().join("out").join(format!("{name}.map")))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    let Some((_, map)) = map else {
        return format!(
            "hot layout: no link map of {name} under {}: is shims/shim/build.rs's layout off?",
            build.display()
        );
    };
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    // The output section's line ("VMA LMA Size Align .text.husk_hot"), then
    // its input sections ("VMA LMA Size Align path:(.text.NAME)").
    let mut size = None;
    let mut sections: Vec<&str> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match (size, fields.as_slice()) {
            (None, [_, _, sz, _, ".text.husk_hot"]) => {
                size = u64::from_str_radix(sz, 16).ok();
            }
            (Some(_), [_, _, _, _, out]) if out.starts_with('.') => break,
            (Some(_), [_, _, _, _, input]) => {
                if let Some(s) = input
                    .rsplit_once(":(.text.")
                    .and_then(|(_, s)| s.strip_suffix(')'))
                {
                    sections.push(s);
                }
            }
            _ => {}
        }
    }
    let Some(size) = size else {
        return format!("hot layout: {} has no .text.husk_hot", map.display());
    };
    let in_binary = section_size(bin, ".text.husk_hot");
    if in_binary != Some(size) {
        return format!(
            "hot layout: {} is not the map of {} (.text.husk_hot {size} bytes there, {in_binary:?} in the binary)",
            map.display(),
            bin.display()
        );
    }
    let matched = globs
        .iter()
        .filter(|g| sections.iter().any(|s| glob_match(g, s)))
        .count();
    format!(
        "hot layout: {matched} of {} listed functions matched ({} sections, {} kB .text.husk_hot){}",
        globs.len(),
        sections.len(),
        size / 1024,
        if matched * 10 < globs.len() * 9 {
            "; under 90%: regenerate the list with scripts/shim-layout.sh"
        } else {
            ""
        }
    )
}

/// The size of section `name` of the ELF file `bin` (`readelf -SW`).
fn section_size(bin: &std::path::Path, name: &str) -> Option<u64> {
    let out = std::process::Command::new("readelf")
        .arg("-SW")
        .arg(bin)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        // "[16] .text.husk_hot PROGBITS addr off size ..."
        let f: Vec<&str> = l.split(']').nth(1)?.split_whitespace().collect();
        (f.first() == Some(&name)).then(|| u64::from_str_radix(f.get(4)?, 16).ok())?
    })
}

/// Whether `s` matches `glob`, whose only wildcard is `*`.
fn glob_match(glob: &str, s: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}
