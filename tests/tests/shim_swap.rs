//! Must show (issue 7, under real containerd 1.6): live shim swap by
//! re-exec.
//!
//! - twenty swaps in a row while a counter container writes a line every
//!   10 ms and an HTTP server container (busybox httpd, in a network
//!   namespace the test creates) is polled: container PIDs and shim PIDs
//!   never change, the counter has no gap and no duplicate, no HTTP
//!   request fails, `ctr task ls` shows both RUNNING throughout; then
//!   exec, kill, pause/resume and stats work;
//! - a container that exits 100 ms into a swap reports its exit code
//!   exactly once (one `/tasks/exit` event, the right code to `ctr run`);
//! - a broken binary (one that fails the probe, a non-shim file) is
//!   refused and the old shim serves on;
//! - a binary that crashes after the exec: detected (the `upgrade` call
//!   fails naming it), the container is cleaned up as after any dead shim
//!   (containerd runs `shim delete`), nothing leaks (docs/live-swap.md).

#[path = "shim_common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use husk_tests::http_poll::{http_get, Poller};
use husk_tests::leaks::assert_no_leaks;
use husk_tests::leaks::{hung_up_connections, settled_descriptors};
use husk_tests::{command, require_root, unique_id, Containerd};

/// `containerd-shim-husk-v2 -namespace default -address A -id ID upgrade
/// [-binary B]`.
fn upgrade(ctd: &Containerd, id: &str, binary: Option<&Path>) -> Output {
    let mut cmd = Command::new(shim_dir().join(SHIM_BIN));
    cmd.arg("-namespace")
        .arg("default")
        .arg("-address")
        .arg(ctd.address())
        .args(["-id", id]);
    cmd.arg("upgrade");
    if let Some(b) = binary {
        cmd.arg("-binary").arg(b);
    }
    command::output_timeout(&mut cmd, Duration::from_secs(90))
}

fn upgrade_ok(ctd: &Containerd, id: &str, binary: Option<&Path>) -> String {
    let out = upgrade(ctd, id, binary);
    assert!(
        out.status.success(),
        "upgrade of {id}'s shim failed: {}",
        command::format_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An executable script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A copy of the shim binary: "the new version" the swaps alternate with.
fn shim_copy(dir: &Path) -> PathBuf {
    let d = dir.join("v2");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(SHIM_BIN);
    std::fs::copy(shim_dir().join(SHIM_BIN), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn task_pid(ctd: &Containerd, id: &str) -> u32 {
    tasks(ctd)
        .into_iter()
        .find(|t| t.0 == id)
        .unwrap_or_else(|| panic!("task {id} not listed"))
        .1
}

/// The pid of the shim serving container `id` (its `shim.pid` file).
fn shim_pid(ctd: &Containerd, id: &str) -> u32 {
    let p = ctd
        .state()
        .join("io.containerd.runtime.v2.task/default")
        .join(id)
        .join("shim.pid");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Open descriptors of a process.
/// A network namespace made for the test (with `lo` up), removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = unique_id("husk-swapns");
        let ip = husk_tests::require_command("ip");
        command::output_ok(Command::new(&ip).args(["netns", "add", &name]));
        command::output_ok(Command::new(&ip).args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `ctr task ls` every 50 ms: every listing must show `ids` RUNNING.
struct TaskWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl TaskWatcher {
    fn start(ctd: &Containerd, ids: &[&str]) -> TaskWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let mut ctr = ctd.ctr_cmd();
        ctr.args(["task", "ls"]);
        let program = ctr.get_program().to_owned();
        let args: Vec<_> = ctr.get_args().map(|a| a.to_owned()).collect();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut rounds, mut bad) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new(&program).args(&args).output().unwrap();
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    for id in &ids {
                        let running = text.lines().any(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            f.first() == Some(&id.as_str()) && f.get(2) == Some(&"RUNNING")
                        });
                        if !out.status.success() || !running {
                            bad.push(format!(
                                "{id}: {text}{}",
                                String::from_utf8_lossy(&out.stderr)
                            ));
                        }
                    }
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                (rounds, bad)
            })
        };
        TaskWatcher {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// `ctr run --rm` (attached) of a counter: one line every 10 ms, to
/// `out`.
fn start_counter(ctd: &Containerd, id: &str, out: &Path) -> Child {
    let file = std::fs::File::create(out).unwrap();
    ctd.ctr_cmd()
        .args(["run", "--rm", "--runtime", NATIVE, IMAGE, id])
        .args([
            "/bin/sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); usleep 10000; done",
        ])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The counter's lines: 0, 1, 2, ... with no gap and no duplicate.
fn check_counter(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let mut n = 0usize;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(
            line.trim().parse::<usize>().ok(),
            Some(i),
            "counter line {i} is {line:?}: a gap or a duplicate"
        );
        n = i + 1;
    }
    n
}

fn wait_lines(path: &Path, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < at_least
    {
        assert!(Instant::now() < deadline, "the counter does not count");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn twenty_swaps_keep_pids_output_connections_and_service() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let alt = shim_copy(env.tmp.path());
    let original = shim_dir().join(SHIM_BIN);
    let ns = Netns::new();

    let counter = unique_id("swap-count");
    let out = env.tmp.path().join("counter.out");
    let mut counter_run = start_counter(ctd, &counter, &out);
    let http = unique_id("swap-http");
    let with_ns = format!("network:{}", ns.path().display());
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        NATIVE,
        "--with-ns",
        &with_ns,
        IMAGE,
        &http,
        "/bin/sh",
        "-c",
        "mkdir -p /tmp/www && echo husk-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    ]);
    wait_task_status(ctd, &counter, "RUNNING");
    wait_task_status(ctd, &http, "RUNNING");
    wait_lines(&out, 5);
    // The server answers before the swaps start.
    let ns_file = std::fs::File::open(ns.path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while let Err(e) = http_get() {
                assert!(Instant::now() < deadline, "httpd does not answer: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    });

    let pids = [task_pid(ctd, &counter), task_pid(ctd, &http)];
    let shims = [shim_pid(ctd, &counter), shim_pid(ctd, &http)];
    let fds_before = shims.map(settled_descriptors);
    let mut fds_after_first = [Vec::new(), Vec::new()];
    let poller = Poller::start(&ns.path());
    let watcher = TaskWatcher::start(ctd, &[&counter, &http]);
    for round in 1..=20 {
        let binary = if round % 2 == 1 { &alt } else { &original };
        for id in [&counter, &http] {
            let report = upgrade_ok(ctd, id, Some(binary));
            assert!(
                report.contains(&format!("swap #{round},"))
                    && report.contains(&format!("-> {}", binary.display())),
                "{report}"
            );
        }
        if round == 1 {
            fds_after_first = shims.map(settled_descriptors);
        }
    }
    let (rounds, bad) = watcher.finish();
    let (ok, failed) = poller.finish();
    assert!(bad.is_empty(), "ctr task ls did not show RUNNING: {bad:?}");
    assert!(rounds > 0);
    assert!(
        failed.is_empty(),
        "HTTP requests failed during the swaps: {failed:?}"
    );
    assert!(ok >= 20, "only {ok} HTTP requests were made");
    assert_eq!([task_pid(ctd, &counter), task_pid(ctd, &http)], pids);
    assert_eq!([shim_pid(ctd, &counter), shim_pid(ctd, &http)], shims);
    assert_eq!(shim_pids(ctd).len(), 2);
    // Twenty execs leaked no descriptor (the first binary held a few
    // more: its successors do not inherit what it never handed over).
    let fds_now = shims.map(settled_descriptors);
    for shim in shims {
        let hung_up = hung_up_connections(shim);
        assert!(
            hung_up.is_empty(),
            "the swapped shim kept connections whose clients hung up:\n{}",
            hung_up.join("\n")
        );
    }
    for shim in 0..2 {
        assert_eq!(
            fds_now[shim].len(),
            fds_after_first[shim].len(),
            "descriptors leaked across swaps: after the first swap\n{:#?}\nafter the twentieth\n{:#?}",
            fds_after_first[shim],
            fds_now[shim]
        );
        assert!(
            fds_now[shim].len() <= fds_before[shim].len(),
            "the swapped shim holds more descriptors than the first binary: before\n{:#?}\nnow\n{:#?}",
            fds_before[shim],
            fds_now[shim]
        );
    }

    // The swapped shim still does everything.
    let e = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        &http,
        "/bin/sh",
        "-c",
        "echo from-exec",
    ]);
    assert_eq!(e, "from-exec\n");
    let metrics = ctd.ctr_ok(&["task", "metrics", &http]);
    assert!(
        metrics.contains("memory") || metrics.contains("pids"),
        "{metrics}"
    );
    ctd.ctr_ok(&["task", "pause", &http]);
    wait_task_status(ctd, &http, "PAUSED");
    ctd.ctr_ok(&["task", "resume", &http]);
    wait_task_status(ctd, &http, "RUNNING");
    kill_and_delete(ctd, &http);

    // The counter: stop it, and its whole output is there, in order.
    ctd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", &counter]);
    let status = command::wait_timeout(&mut counter_run, Duration::from_secs(30))
        .expect("ctr run of the counter ends after the kill");
    assert_eq!(status.code(), Some(137), "ctr run reports the SIGKILL");
    let lines = check_counter(&out);
    assert!(lines >= 50, "only {lines} counter lines");
    wait_no_shims(ctd);
    assert_no_leaks(&counter);
    assert_no_leaks(&http);
}

/// The binary the swap goes to waits on a FIFO before it takes over, so
/// the test holds the swap open; the container exits 100 ms after the
/// swap started, while no binary serves.
#[test]
fn an_exit_during_the_swap_is_reported_exactly_once() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let gate = env.tmp.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Perl, not a shell: a shell reaps any child it finds exited, and
    // this process keeps the shim's pid, so the container's would be lost.
    let slow = env.tmp.path().join("slow-shim");
    std::fs::write(
        &slow,
        format!(
            "#!/usr/bin/perl\n\
             if ($ENV{{HUSK_SHIM_HANDOVER}}) {{ open(my $g, '<', '{}') or die; my $l = <$g>; }}\n\
             exec {{ '{shim}' }} '{shim}', @ARGV or die;\n",
            gate.display(),
            shim = shim_dir().join(SHIM_BIN).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique_id("swap-exit");
    let events_out = env.tmp.path().join("events");
    let mut events = ctd
        .ctr_cmd()
        .args(["events"])
        .stdout(std::fs::File::create(&events_out).unwrap())
        .spawn()
        .unwrap();
    let mut run = ctd
        .ctr_cmd()
        .args(["run", "--rm", "--runtime", NATIVE, IMAGE, &id])
        .args([
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; while true; do usleep 10000; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_task_status(ctd, &id, "RUNNING");
    let pid = task_pid(ctd, &id);
    let shim = shim_pid(ctd, &id);
    let upgrading = std::thread::scope(|s| {
        let h = s.spawn(|| upgrade(ctd, &id, Some(&slow)));
        // The swap has started once the shim's pid runs the script (the
        // kernel names a script executed from a descriptor /dev/fd/N).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(format!("/proc/{shim}/cmdline"))
            .unwrap_or_default()
            .contains("\0/dev/fd/")
        {
            assert!(Instant::now() < deadline, "the swap did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        // The container exits now (its trap), while no binary serves.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        // Its exit waits for the successor: a zombie of the shim's pid.
        let deadline = Instant::now() + Duration::from_secs(10);
        while children_of(shim)
            .iter()
            .all(|c| !(c.0 == pid && c.1 == 'Z'))
        {
            assert!(
                Instant::now() < deadline,
                "the container did not exit: {:?}",
                children_of(shim)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&gate)
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        h.join().unwrap()
    });
    assert!(
        upgrading.status.success(),
        "{}\n{}",
        command::format_output(&upgrading),
        ctd.log()
    );
    let status = command::wait_timeout(&mut run, Duration::from_secs(30)).expect("ctr run ends");
    if status.code() != Some(42) {
        eprintln!("DEBUG containerd log:\n{}", ctd.log());
    }
    assert_eq!(status.code(), Some(42), "the exit code reaches its waiter");
    wait_no_shims(ctd);
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let _ = events.wait();
    let log = std::fs::read_to_string(&events_out).unwrap();
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/tasks/exit") && l.contains(&id))
        .collect();
    assert_eq!(exits.len(), 1, "one /tasks/exit for {id}: {log}");
    assert!(exits[0].contains("42"), "{}", exits[0]);
    assert_no_leaks(&id);
}

#[test]
fn broken_binaries_are_refused_and_the_old_shim_serves_on() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let id = unique_id("swap-broken");
    run_sleeper(ctd, NATIVE, &id);
    wait_task_status(ctd, &id, "RUNNING");
    let shim = shim_pid(ctd, &id);
    let fails_probe = script(
        env.tmp.path(),
        "fails-probe",
        "echo 'cannot read handovers' >&2; exit 3",
    );
    let not_a_shim = PathBuf::from("/bin/true");
    let not_executable = env.tmp.path().join("data");
    std::fs::write(&not_executable, "not a program").unwrap();
    let missing = env.tmp.path().join("missing");
    for (bin, expect) in [
        (&fails_probe, "failed its handover probe"),
        (&not_a_shim, "is it a husk shim binary"),
        (&not_executable, "not an executable file"),
        (&missing, "missing"),
    ] {
        let out = upgrade(ctd, &id, Some(bin));
        let err = command::format_output(&out);
        assert!(
            !out.status.success(),
            "swap to {} accepted: {err}",
            bin.display()
        );
        assert!(err.contains(expect), "swap to {}: {err}", bin.display());
        assert_eq!(shim_pid(ctd, &id), shim);
        assert_eq!(task_status(ctd, &id).as_deref(), Some("RUNNING"));
    }
    // It still serves, unchanged, and can still swap.
    let out = ctd.ctr_ok(&["task", "exec", "--exec-id", "e1", &id, "/bin/echo", "alive"]);
    assert_eq!(out, "alive\n");
    let report = upgrade_ok(ctd, &id, None);
    assert!(report.contains("swap #1,"), "{report}");
    kill_delete_and_check(ctd, &id);
}

/// The design's answer (docs/live-swap.md): after the exec there is no
/// old binary left to roll back to. A successor that crashes is a dead
/// shim: the `upgrade` call fails saying so, containerd sees the shim's
/// connection close and runs `shim delete`, which kills and removes the
/// container; nothing leaks.
#[test]
fn a_binary_that_crashes_after_exec_is_detected_and_cleaned_up() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let crash = script(
        env.tmp.path(),
        "crash-shim",
        &format!(
            "if [ -n \"$HUSK_SHIM_HANDOVER\" ]; then kill -SEGV $$; fi\nexec {} \"$@\"",
            shim_dir().join(SHIM_BIN).display()
        ),
    );
    let id = unique_id("swap-crash");
    run_sleeper(ctd, NATIVE, &id);
    wait_task_status(ctd, &id, "RUNNING");
    let pid = task_pid(ctd, &id);
    let out = upgrade(ctd, &id, Some(&crash));
    let err = command::format_output(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("crashed after it was executed"), "{err}");
    // containerd cleans up after the dead shim.
    let deadline = Instant::now() + Duration::from_secs(20);
    while task_status(ctd, &id).as_deref() == Some("RUNNING")
        || Path::new(&format!("/proc/{pid}")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "the orphaned container was not cleaned up: {:?}",
            tasks(ctd)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ctd.log().contains("cleaning up after shim disconnected"),
        "containerd noticed the dead shim"
    );
    let _ = ctd.ctr(&["task", "delete", "--force", &id]);
    ctd.ctr_ok(&["container", "delete", &id]);
    assert!(shim_pids(ctd).is_empty());
    assert_no_leaks(&id);
}

/// A shim that never gets a Create exits on its own (issue 3):
/// `HUSK_SHIM_IDLE_TIMEOUT` shortens the 60 s for the test.
#[test]
fn a_shim_without_a_container_exits_after_its_idle_timeout() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("husk-idle-")
        .tempdir()
        .unwrap();
    let id = unique_id("swap-idle");
    let address = dir.path().join("no-containerd.sock");
    let out = command::output_timeout(
        Command::new(shim_dir().join(SHIM_BIN))
            .args(["-namespace", "husk-idle", "-id", &id, "-address"])
            .arg(&address)
            .arg("start")
            .current_dir(dir.path())
            .env("HUSK_SHIM_IDLE_TIMEOUT", "1")
            .stdin(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", command::format_output(&out));
    let socket = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("unix://")
        .to_string();
    let pid: u32 = std::fs::read_to_string(dir.path().join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the idle shim {pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it exited too early"
    );
    assert!(
        !Path::new(&socket).exists(),
        "its socket {socket} was removed"
    );
}
