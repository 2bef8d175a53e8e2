//! How long `husk run --rm IMAGE /bin/true` takes through huskd, against
//! `ctr run --rm` (containerd 1.6 + containerd-shim-runc-v2 + runc) and the
//! `unshare … chroot` floor, side by side in one run.
//!
//! ```text
//! cargo build --release -p husk-core -p husk-shim -p husk-plugins
//! cargo bench -p husk-tests --bench huskd_run          # as root
//! BENCH_ITERS=50 cargo bench -p husk-tests --bench huskd_run
//! ```
//!
//! A private huskd (release build, no `--debug`) and a private containerd
//! each get husk's busybox image; the floor runs in a busybox rootfs. Every
//! contender runs `/bin/true` in turn (round-robin, starting with a
//! different contender each round, so drift in the machine's load hits all
//! alike). Timed is the whole client command, wall clock: for husk, create
//! (overlay mount, bundle, shim start, Create), start, attach, wait, until
//! `run --rm` returns with the exit code: once the container is unlisted
//! and its output drained (huskd deletes the task, shuts the shim down,
//! unmounts and removes it right after, in the background; the leak check
//! below waits for that); for ctr the same through containerd. Every run
//! must exit 0; a preflight checks each contender really runs a container
//! (`/bin/echo` and its output). Afterwards nothing may be left: no
//! container in huskd or containerd, no shim, no mount (but huskd's spare
//! shims and their rootfs mounted ahead, until huskd stops).
//!
//! Contenders:
//! - `husk run --rm IMAGE /bin/true` (runtime `native`: containerd-shim-husk-v2)
//! - `husk run --rm --runtime runc IMAGE /bin/true` (Debian's
//!   containerd-shim-runc-v2 driven by huskd)
//! - `ctr run --rm IMAGE ID /bin/true` (containerd + containerd-shim-runc-v2)
//! - the floor: `unshare --pid --fork --mount --uts --ipc --net chroot
//!   ROOTFS /bin/true` (namespaces and a chroot, as in `runtime_run`)
//!
//! Targets (issue 4): husk at most 2x the floor, and at least 6x faster
//! than containerd + runc. Both are printed as met or missed; the bench
//! fails only if something does not run or leaks.
//!
//! huskd keeps a spare shim (docs/architecture.md, "Spare shims"); the
//! leak check allows the spares huskd lists (`husk shim ls --spares`) and,
//! once huskd is stopped, no shim of it may be left at all.
//!
//! `HUSKD_RUN_BASELINE=DIR` adds a contender: `husk run --rm` through the
//! huskd, husk and containerd-shim-husk-v2 found in DIR (e.g. copies of an
//! earlier build), on its own temp dirs, in the same rounds: a before/after
//! comparison under the same load. It always runs right before `husk run
//! --rm` in the round-robin, so its background work (removals, a spare
//! shim starting) lands on that contender: two copies of one build measured
//! 0.9-1.1x apart at load 5, so only larger differences tell.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use husk_tests::huskd::{Huskd, HuskdOptions, IMAGE};
use husk_tests::stats::{self, Summary};
use husk_tests::{command, leaks, unique_id, Bundle, Containerd, ImageBuilder};

const DEFAULT_ITERS: usize = 30;
const WARMUP: usize = 2;
const MARKER: &str = "husk-bench-preflight-ok";
const CTR_IMAGE: &str = "husk.test/busybox:latest";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    HuskNative,
    HuskRunc,
    Ctr,
    Floor,
    Baseline,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::HuskNative, "husk run --rm"),
    (Kind::HuskRunc, "husk run --rm --runtime runc"),
    (Kind::Ctr, "ctr run --rm (runc shim)"),
    (Kind::Floor, "floor [1]"),
];
const BASELINE: (Kind, &str) = (Kind::Baseline, "husk run --rm [baseline]");

struct Setup {
    huskd: Huskd,
    ctd: Containerd,
    floor: Bundle,
    baseline: Option<Baseline>,
}

/// A huskd from another build (`HUSKD_RUN_BASELINE`), on its own temp dirs.
struct Baseline {
    dir: PathBuf,
    child: Child,
    tmp: tempfile::TempDir,
    socket: PathBuf,
}

impl Baseline {
    fn start(dir: PathBuf, image_tar: &Path) -> Result<Baseline, String> {
        for bin in ["huskd", "husk", "containerd-shim-husk-v2"] {
            if !dir.join(bin).is_file() {
                return Err(format!("HUSKD_RUN_BASELINE: no {bin} in {}", dir.display()));
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("husk-bench-baseline-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let socket = tmp.path().join("huskd.sock");
        let log = std::fs::File::create(tmp.path().join("huskd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(dir.join("huskd"))
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--state")
            .arg(tmp.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the baseline huskd: {e}"))?;
        let b = Baseline {
            dir,
            child,
            tmp,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&b.socket).is_err() {
            if Instant::now() >= deadline {
                return Err("the baseline huskd does not serve".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let path = image_tar.to_string_lossy().into_owned();
        let out = command::output(&mut b.husk_cmd(&["image", "import", "--name", IMAGE, &path]));
        if !out.status.success() {
            return Err(format!("baseline import: {}", command::format_output(&out)));
        }
        Ok(b)
    }

    fn husk_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.dir.join("husk"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if command::wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = &self.tmp;
    }
}

impl Setup {
    fn command(&self, kind: Kind, args: &[&str]) -> Command {
        match kind {
            Kind::HuskNative => self
                .huskd
                .husk_cmd(&[&["run", "--rm", IMAGE], args].concat()),
            Kind::HuskRunc => self
                .huskd
                .husk_cmd(&[&["run", "--rm", "--runtime", "runc", IMAGE], args].concat()),
            Kind::Ctr => {
                let id = unique_id("bench-huskd-run");
                let mut c = self.ctd.ctr_cmd();
                c.args(["run", "--rm", CTR_IMAGE, &id]).args(args);
                c
            }
            Kind::Baseline => self
                .baseline
                .as_ref()
                .expect("a baseline contender has a baseline huskd")
                .husk_cmd(&[&["run", "--rm", IMAGE], args].concat()),
            Kind::Floor => {
                let mut c = Command::new("unshare");
                c.args([
                    "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "chroot",
                ])
                .arg(self.floor.rootfs())
                .args(args);
                c
            }
        }
    }
}

fn main() -> ExitCode {
    let iters = match stats::bench_rounds(
        "huskd_run",
        "huskd mounts overlays and creates namespaces",
        DEFAULT_ITERS,
    ) {
        Ok(n) => n,
        Err(code) => return code,
    };
    husk_tests::require_command("containerd-shim-runc-v2");
    husk_tests::require_command("unshare");

    let huskd = Huskd::start_with_options(HuskdOptions {
        debug: false,
        ..Default::default()
    });
    huskd.import_busybox();
    let ctd = Containerd::start();
    let tar = huskd.tmp.path().join("busybox.tar");
    if !tar.exists() {
        ImageBuilder::busybox().write_tar(&tar);
    }
    ctd.import_image(&tar, "husk.test/busybox");
    let baseline = match std::env::var_os("HUSKD_RUN_BASELINE") {
        Some(dir) => match Baseline::start(PathBuf::from(dir), &tar) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("huskd_run: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mut kinds = KINDS.to_vec();
    if baseline.is_some() {
        kinds.push(BASELINE);
    }
    let setup = Setup {
        huskd,
        ctd,
        floor: Bundle::busybox(&["/bin/true"]),
        baseline,
    };

    for &(kind, name) in &kinds {
        if let Err(e) = preflight(&setup, kind) {
            eprintln!("huskd_run: {name} does not run a container: {e}");
            return ExitCode::FAILURE;
        }
    }

    println!(
        "huskd_run: {iters} rounds (+{WARMUP} warm-up) of /bin/true in husk's busybox image, \
         round-robin over {} contenders, wall clock per client command",
        kinds.len()
    );
    stats::print_load();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for round in 0..WARMUP + iters {
        for k in 0..kinds.len() {
            let i = (round + k) % kinds.len();
            let (kind, name) = kinds[i];
            let mut cmd = setup.command(kind, &["/bin/true"]);
            cmd.stdin(Stdio::null());
            let began = Instant::now();
            let out = command::output(&mut cmd);
            let took = began.elapsed();
            if !out.status.success() {
                eprintln!(
                    "huskd_run: {name} failed in round {round}: `{}`: {}",
                    command::describe(&cmd),
                    command::format_output(&out)
                );
                return ExitCode::FAILURE;
            }
            if round >= WARMUP {
                samples[i].push(took);
            }
        }
    }
    stats::print_load();
    let summaries: Vec<Summary> = samples
        .iter()
        .map(|s| Summary::of(s).expect("every contender has samples"))
        .collect();
    report(&kinds, &summaries);

    let found = leftovers(&setup);
    // Stopped, huskd shuts its spare shims down: then none may be left.
    let Setup {
        huskd, baseline, ..
    } = setup;
    drop(baseline);
    let address = huskd.socket.to_string_lossy().into_owned();
    let dir = huskd.tmp.path().to_path_buf();
    // Drop stops it (SIGTERM, waited for).
    drop(huskd);
    let found = found.and_then(|()| no_shims_of(&address)).and_then(|()| {
        let m = leaks::mount_points_under(&dir);
        if m.is_empty() {
            Ok(())
        } else {
            Err(format!("mounts after huskd stopped: {m:?}"))
        }
    });
    match found {
        Ok(()) => {
            println!(
                "\nleft behind: nothing (no container, shim or mount; no shim once huskd stopped)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("huskd_run: left behind after the runs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No shim process names `address` (within 2 s).
fn no_shims_of(address: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let shims: Vec<String> = leaks::processes_matching(address)
            .into_iter()
            .filter(|p| p.cmdline.contains("shim"))
            .map(|p| format!("shim process {p} after huskd stopped"))
            .collect();
        if shims.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(shims.join("; "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `/bin/echo MARKER` through the contender and checks the output.
fn preflight(s: &Setup, kind: Kind) -> Result<(), String> {
    let mut cmd = s.command(kind, &["/bin/echo", MARKER]);
    let out = command::try_output_timeout(&mut cmd, Duration::from_secs(60))?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != MARKER {
        return Err(format!(
            "`{}` (expected exit 0 and {MARKER:?} on stdout): {}",
            command::describe(&cmd),
            command::format_output(&out)
        ));
    }
    Ok(())
}

fn report(kinds: &[(Kind, &str)], s: &[Summary]) {
    println!();
    println!(
        "{:<30} {:>9} {:>8} {:>8} {:>5}",
        "contender", "median ms", "p10 ms", "p90 ms", "n"
    );
    for ((_, name), s) in kinds.iter().zip(s) {
        println!(
            "{name:<30} {:>9.2} {:>8.2} {:>8.2} {:>5}",
            s.median, s.p10, s.p90, s.n
        );
    }
    println!(
        "[1] unshare --pid --fork --mount --uts --ipc --net chroot ROOTFS /bin/true \
         (namespaces and a chroot, no runtime)"
    );
    let [husk, husk_runc, ctr, floor] = [s[0], s[1], s[2], s[3]];
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let r = husk.median / floor.median;
    println!(
        "husk / floor            {r:>6.2}x  (target <= 2x: {}; p90 {:.2}x)",
        verdict(r <= 2.0),
        husk.p90 / floor.p90
    );
    let r = ctr.median / husk.median;
    println!(
        "ctr+runc / husk         {r:>6.2}x  (target >= 6x faster: {}; p90 {:.2}x)",
        verdict(r >= 6.0),
        ctr.p90 / husk.p90
    );
    println!(
        "ctr+runc / husk+runc    {:>6.2}x  (the same runc shim, driven by huskd instead of containerd)",
        ctr.median / husk_runc.median
    );
    println!(
        "husk+runc / husk        {:>6.2}x  (runc's shim and runc against husk's shim, both under huskd)",
        husk_runc.median / husk.median
    );
    if let Some(base) = s.get(4) {
        println!(
            "baseline / husk         {:>6.2}x  (HUSKD_RUN_BASELINE's build against this one; baseline/floor {:.2}x, ctr/baseline {:.2}x)",
            base.median / husk.median,
            base.median / floor.median,
            ctr.median / base.median
        );
    }
}

/// Containers, shims and mounts still there after the runs.
fn leftovers(s: &Setup) -> Result<(), String> {
    let mut found = Vec::new();
    let ids = s.huskd.container_ids();
    if !ids.is_empty() {
        found.push(format!("huskd still lists {ids:?}"));
    }
    let ctd_list = s.ctd.ctr(&["containers", "ls", "-q"]);
    let listed = String::from_utf8_lossy(&ctd_list.stdout).trim().to_string();
    if !listed.is_empty() {
        found.push(format!("containerd still lists {listed:?}"));
    }
    // Shims are given the huskd socket (`-address`) and containerd's;
    // huskd's spare shims serve no container.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let listed = s.huskd.spare_shims();
        let spares: Vec<u32> = listed.iter().map(|s| s.1).collect();
        // A spare's rootfs mounted ahead for its container (checked again
        // once huskd has stopped: then no mount may be left at all).
        let spare_rootfs: Vec<PathBuf> = listed
            .iter()
            .map(|sp| s.huskd.state.join("spares").join(&sp.0).join("rootfs"))
            .collect();
        let mut now = Vec::new();
        for needle in [
            s.huskd.socket.to_string_lossy().into_owned(),
            s.ctd.address().to_string_lossy().into_owned(),
        ] {
            now.extend(
                leaks::processes_matching(&needle)
                    .into_iter()
                    .filter(|p| p.cmdline.contains("shim") && !spares.contains(&p.pid))
                    .map(|p| format!("shim process {p}")),
            );
        }
        for dir in [s.huskd.tmp.path(), s.ctd.dir()] {
            now.extend(
                leaks::mount_points_under(dir)
                    .into_iter()
                    .filter(|m| !spare_rootfs.contains(m))
                    .map(|m| format!("mount {}", m.display())),
            );
        }
        if now.is_empty() || Instant::now() >= deadline {
            found.extend(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(found.join("; "))
    }
}
