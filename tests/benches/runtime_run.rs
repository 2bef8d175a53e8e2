//! How long one `run` of `/bin/true` takes: husk-runtime against its peers.
//!
//! ```text
//! cargo build --release -p husk-runtime
//! cargo bench -p husk-tests --bench runtime_run          # as root
//! BENCH_ITERS=100 cargo bench -p husk-tests --bench runtime_run
//! ```
//!
//! One busybox bundle running `/bin/true`; every contender runs it in turn
//! (round-robin, starting with a different contender each round, so drift in
//! the machine's load hits all alike), each time as a fresh container id
//! with its own `--root`. Timed is the whole command, wall clock: create,
//! start, wait, delete. Every run must exit 0; a failure aborts with stderr.
//!
//! Contenders:
//! - `husk-runtime --root R run --bundle B ID` (`$HUSK_RUNTIME_BIN`, or
//!   `target/release/husk-runtime`)
//! - `runc --root R run --bundle B ID`
//! - `crun --root R run --bundle B ID`; on a hybrid cgroup host (crun 1.8
//!   refuses those) inside `unshare -m sh -c 'umount /sys/fs/cgroup/unified
//!   && exec crun ...'`, whose own cost is measured and printed too
//! - the floor: `unshare --pid --fork --mount --uts --ipc --net chroot ROOTFS
//!   /bin/true` (namespaces and a chroot, no runtime)
//!
//! A contender that is missing, or that does not really run a container (a
//! preflight runs `/bin/echo` and checks its output), is reported and left
//! out; the bench then exits 2 after printing the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use husk_tests::stats::Summary;
use husk_tests::{command, find_command, husk_runtime_bin, unique_id, Bundle};
use tempfile::TempDir;

const DEFAULT_ITERS: usize = 30;
const WARMUP: usize = 2;
const MARKER: &str = "husk-bench-preflight-ok";
const HYBRID_CRUN_NOTE: &str = "crun 1.8 refuses hybrid cgroups: run as `unshare -m sh -c 'umount \
     /sys/fs/cgroup/unified && exec crun ...'`, which adds the wrapper's cost below";

/// How a contender turns (bundle, rootfs, id) into a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A runc-compatible CLI: `BIN --root R run --bundle B ID`.
    OciCli,
    /// Same, inside `unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec ...'`.
    OciCliWithoutUnified,
    /// `unshare ... chroot ROOTFS ARGS`.
    Floor,
    /// `unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec /bin/true'`
    /// (informational: the crun wrapper alone).
    WrapperOnly,
}

struct Contender {
    name: String,
    kind: Kind,
    bin: PathBuf,
    /// `--root` state dir for OCI CLIs.
    root: Option<TempDir>,
    /// Shown under the table.
    note: Option<String>,
    /// Whether it takes part in the husk/peer ratios.
    peer: bool,
    samples: Vec<Duration>,
}

impl Contender {
    fn command(&self, bundle: &Path, rootfs: &Path, id: &str, args: &[&str]) -> Command {
        let oci = |c: &mut Command| {
            c.arg("--root")
                .arg(self.root.as_ref().expect("OCI CLIs have a root").path())
                .args(["run", "--bundle"])
                .arg(bundle)
                .arg(id);
        };
        match self.kind {
            Kind::OciCli => {
                let mut c = Command::new(&self.bin);
                oci(&mut c);
                c
            }
            Kind::OciCliWithoutUnified => {
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    "umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\"",
                ])
                .arg(&self.bin);
                oci(&mut c);
                c
            }
            Kind::Floor => {
                let mut c = Command::new(&self.bin);
                c.args([
                    "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "chroot",
                ])
                .arg(rootfs)
                .args(args);
                c
            }
            Kind::WrapperOnly => {
                let mut c = Command::new(&self.bin);
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    "umount /sys/fs/cgroup/unified && exec /bin/true",
                ]);
                c
            }
        }
    }
}

/// Whether /sys/fs/cgroup/unified is a cgroup2 mount next to v1 controllers.
fn hybrid_cgroups() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"/sys/fs/cgroup/unified") && l.contains(" - cgroup2 ")
        })
}

fn main() -> ExitCode {
    let iters = match husk_tests::stats::bench_rounds(
        "runtime_run",
        "it creates namespaces, cgroups and mounts",
        DEFAULT_ITERS,
    ) {
        Ok(n) => n,
        Err(code) => return code,
    };

    let (contenders, missing) = contenders();
    let hybrid = hybrid_cgroups();

    // Preflight: every contender must really run a container.
    let probe = Bundle::busybox(&["/bin/echo", MARKER]);
    let mut ready = Vec::new();
    let mut broken = missing;
    for c in contenders {
        match preflight(&c, &probe) {
            Ok(()) => ready.push(c),
            Err(e) => broken.push((c.name.clone(), e)),
        }
    }
    drop(probe);
    for (name, why) in &broken {
        eprintln!("runtime_run: contender {name} left out: {why}");
    }
    if ready.iter().all(|c| c.kind == Kind::WrapperOnly) {
        eprintln!("runtime_run: no contender can run; nothing to measure");
        return ExitCode::FAILURE;
    }

    let bundle = Bundle::busybox(&["/bin/true"]);
    let rootfs = bundle.rootfs();
    println!(
        "runtime_run: {iters} iterations (+{WARMUP} warm-up) of `run` /bin/true in a busybox bundle, \
         round-robin over {} contenders, wall clock per command (create+start+wait+delete)",
        ready.len()
    );
    for c in &ready {
        println!("  {:<24} {}", c.name, c.bin.display());
    }
    husk_tests::stats::print_load();
    for round in 0..WARMUP + iters {
        let n = ready.len();
        for k in 0..n {
            let c = &mut ready[(round + k) % n];
            let id = unique_id(&format!("bench-{round}-{k}"));
            let mut cmd = c.command(bundle.path(), &rootfs, &id, &["/bin/true"]);
            cmd.stdin(Stdio::null());
            let start = Instant::now();
            let out = command::output(&mut cmd);
            let elapsed = start.elapsed();
            if !out.status.success() {
                eprintln!(
                    "runtime_run: {} failed in round {round}: `{}`: {}",
                    c.name,
                    command::describe(&cmd),
                    command::format_output(&out)
                );
                return ExitCode::FAILURE;
            }
            if round >= WARMUP {
                c.samples.push(elapsed);
            }
        }
    }
    drop(bundle);

    report(&ready, &broken, hybrid);
    if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "runtime_run: incomplete: {} left out",
            broken
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ExitCode::from(2)
    }
}

/// The contenders found, and those missing with the reason.
fn contenders() -> (Vec<Contender>, Vec<(String, String)>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let root = || {
        Some(
            tempfile::Builder::new()
                .prefix("husk-bench-root-")
                .tempdir()
                .expect("creating a --root temp dir"),
        )
    };
    let mut add =
        |name: &str, kind, bin: Option<PathBuf>, why: String, note, peer, needs_root| match bin {
            Some(bin) => found.push(Contender {
                name: name.to_string(),
                kind,
                bin,
                root: if needs_root { root() } else { None },
                note,
                peer,
                samples: Vec::new(),
            }),
            None => missing.push((name.to_string(), why)),
        };

    let husk = husk_runtime_bin();
    add(
        "husk-runtime",
        Kind::OciCli,
        husk.is_file().then(|| husk.clone()),
        format!(
            "{} not found: build it with `cargo build --release -p husk-runtime` \
             (or set HUSK_RUNTIME_BIN)",
            husk.display()
        ),
        None,
        false,
        true,
    );
    let install = "not installed: run scripts/install-deps.sh".to_string();
    add(
        "runc",
        Kind::OciCli,
        find_command("runc"),
        install.clone(),
        None,
        true,
        true,
    );
    let hybrid = hybrid_cgroups();
    let (crun_name, crun_kind, crun_note) = if hybrid {
        (
            "crun [1]",
            Kind::OciCliWithoutUnified,
            Some(format!("[1] {HYBRID_CRUN_NOTE}")),
        )
    } else {
        ("crun", Kind::OciCli, None)
    };
    add(
        crun_name,
        crun_kind,
        find_command("crun"),
        install.clone(),
        crun_note,
        true,
        true,
    );
    add(
        "floor [2]",
        Kind::Floor,
        find_command("unshare"),
        "unshare not installed: apt-get install util-linux".to_string(),
        Some("[2] unshare --pid --fork --mount --uts --ipc --net chroot ROOTFS /bin/true".into()),
        true,
        false,
    );
    if hybrid {
        add(
            "crun wrapper alone [3]",
            Kind::WrapperOnly,
            find_command("unshare"),
            "unshare not installed: apt-get install util-linux".to_string(),
            Some(
                "[3] unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec /bin/true': \
                 part of [1], not a peer"
                    .into(),
            ),
            false,
            false,
        );
    }
    (found, missing)
}

/// Runs `/bin/echo MARKER` through the contender and checks the output.
fn preflight(c: &Contender, probe: &Bundle) -> Result<(), String> {
    let id = unique_id("bench-preflight");
    let mut cmd = c.command(probe.path(), &probe.rootfs(), &id, &["/bin/echo", MARKER]);
    let out = command::try_output_timeout(&mut cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            command::describe(&cmd),
            command::format_output(&out)
        ));
    }
    if c.kind == Kind::WrapperOnly {
        return Ok(());
    }
    if String::from_utf8_lossy(&out.stdout).trim() != MARKER {
        return Err(format!(
            "`{}` exited 0 but did not run the container (expected {MARKER:?} on stdout): {}",
            command::describe(&cmd),
            command::format_output(&out)
        ));
    }
    Ok(())
}

fn report(ready: &[Contender], broken: &[(String, String)], hybrid: bool) {
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>5}",
        "contender", "median ms", "p10 ms", "p90 ms", "n"
    );
    let mut medians = Vec::new();
    for c in ready {
        let s = Summary::of(&c.samples).expect("every ready contender has samples");
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>5}",
            c.name, s.median, s.p10, s.p90, s.n
        );
        medians.push((c, s.median));
    }
    for (name, _) in broken {
        println!("{name:<24} {:>9}", "MISSING");
    }
    println!();
    for c in ready {
        if let Some(note) = &c.note {
            println!("{note}");
        }
    }
    if hybrid {
        println!("(cgroups: hybrid v1 + cgroup2 at /sys/fs/cgroup/unified)");
    }
    println!();
    match medians.iter().find(|(c, _)| c.name == "husk-runtime") {
        Some((_, husk)) => {
            for (c, m) in medians.iter().filter(|(c, _)| c.peer) {
                println!(
                    "husk/{:<20} {:>6.2}  (median {husk:.2} ms / {m:.2} ms)",
                    c.name,
                    husk / m
                );
            }
        }
        None => println!("husk/peer ratios: not available (husk-runtime left out)"),
    }
}
