//! The Task service paths `ctr` alone does not prove: Update (resources
//! reach the container's cgroup), CloseIO (stdin EOF reaches the
//! container), events arriving at containerd (every topic the shim
//! publishes, OOM included), and the orphan sweep (a container sharing the
//! host's pid namespace leaves no zombie under the shim).

#[path = "shim_common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::api;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{command, require_root, unique_id, Containerd};
use protobuf::well_known_types::any::Any;

/// `ctr run -d` of `args` in the busybox image with husk's shim.
fn run_detached(ctd: &Containerd, id: &str, extra: &[&str], args: &[&str]) {
    let mut argv = vec!["run", "-d", "--runtime", NATIVE];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&[IMAGE, id]);
    argv.extend_from_slice(args);
    ctd.ctr_ok(&argv);
    wait_task_status(ctd, id, "RUNNING");
}

fn task_pid(ctd: &Containerd, id: &str) -> u32 {
    tasks(ctd)
        .into_iter()
        .find(|t| t.0 == id)
        .map(|t| t.1)
        .unwrap_or_else(|| panic!("no task {id}"))
}

/// The file `name` of `controller` in the cgroup of `pid`: the v1
/// hierarchy of that controller, else the unified one.
fn cgroup_file(pid: u32, controller: &str, v1_name: &str, v2_name: &str) -> PathBuf {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in table.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == controller) {
            return PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}/{v1_name}"));
        }
    }
    let path = table
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    PathBuf::from(format!("/sys/fs/cgroup{path}/{v2_name}"))
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn update_changes_the_cgroup() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let id = unique_id("shim-update");
    run_detached(ctd, &id, &[], &["/bin/sleep", "600"]);
    let pid = task_pid(ctd, &id);
    let pids_max = cgroup_file(pid, "pids", "pids.max", "pids.max");
    let mem_max = cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max");
    assert_ne!(read_trim(&pids_max), "42");

    // ctr 1.6 has no `task update`: send Update the way containerd does.
    let client = task_client(&shim_address(ctd, &id));
    let mut resources = Any::new();
    resources.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    resources.value = br#"{"pids":{"limit":42},"memory":{"limit":67108864}}"#.to_vec();
    client
        .update(
            ttrpc_ctx(),
            &api::UpdateTaskRequest {
                id: id.clone(),
                resources: Some(resources.clone()).into(),
                ..Default::default()
            },
        )
        .expect("Update");
    assert_eq!(read_trim(&pids_max), "42");
    assert_eq!(read_trim(&mem_max), "67108864");
    // Bad resources and an unknown id get errors, and change nothing.
    let mut bad = resources.clone();
    bad.value = b"{not json".to_vec();
    let err = client
        .update(
            ttrpc_ctx(),
            &api::UpdateTaskRequest {
                id: id.clone(),
                resources: Some(bad).into(),
                ..Default::default()
            },
        )
        .expect_err("Update with bad JSON");
    assert!(format!("{err:?}").contains("resources"), "{err:?}");
    client
        .update(
            ttrpc_ctx(),
            &api::UpdateTaskRequest {
                id: "nope".into(),
                resources: Some(resources).into(),
                ..Default::default()
            },
        )
        .expect_err("Update of an unknown id");
    assert_eq!(read_trim(&pids_max), "42");
    drop(client);

    kill_and_delete(ctd, &id);
    wait_no_shims(ctd);
    assert_no_leaks(&id);
}

/// Runs `ctr ARGS` with `input` on its stdin (closed after), returns
/// (exit code, stdout).
fn ctr_with_stdin(ctd: &Containerd, args: &[&str], input: &[u8]) -> (Option<i32>, String) {
    let mut cmd = ctd.ctr_cmd();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start ctr");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    let status = command::wait_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`{}` did not end 30 s after its stdin closed: EOF never reached the container",
            command::describe(&cmd)
        );
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        command::describe(&cmd),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn close_io_delivers_stdin_eof() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    // The init: `cat` ends only when its stdin reaches EOF.
    let id = unique_id("shim-stdin");
    let (code, out) = ctr_with_stdin(
        ctd,
        &["run", "--rm", "--runtime", NATIVE, IMAGE, &id, "/bin/cat"],
        b"data\nmore\n",
    );
    assert_eq!(code, Some(0));
    assert_eq!(out, "data\nmore\n");
    assert_no_leaks(&id);

    // An exec: the same through the exec's own stdin.
    let id = unique_id("shim-stdin-exec");
    run_detached(ctd, &id, &[], &["/bin/sleep", "600"]);
    let (code, out) = ctr_with_stdin(
        ctd,
        &[
            "task",
            "exec",
            "--exec-id",
            "wc",
            &id,
            "/bin/sh",
            "-c",
            "wc -l; echo done",
        ],
        b"1\n2\n3\n",
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["3", "done"],
        "{out}"
    );

    // CloseIO itself, over ttrpc: the client's writer stays open, so only
    // CloseIO can end the exec's input.
    let fifo = env.tmp.path().join("stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = env.tmp.path().join("stdout");
    let client = task_client(&shim_address(ctd, &id));
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = br#"{"args":["/bin/sh","-c","cat; echo eof"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#.to_vec();
    client
        .exec(
            ttrpc_ctx(),
            &api::ExecProcessRequest {
                id: id.clone(),
                exec_id: "closeio".into(),
                spec: Some(spec).into(),
                stdin: fifo.to_string_lossy().into_owned(),
                stdout: format!("file://{}", out.display()),
                ..Default::default()
            },
        )
        .expect("Exec");
    client
        .start(
            ttrpc_ctx(),
            &api::StartRequest {
                id: id.clone(),
                exec_id: "closeio".into(),
                ..Default::default()
            },
        )
        .expect("Start the exec");
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(b"x\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        task_status_exec(&client, &id, "closeio"),
        containerd_shim_protos::types::task::Status::RUNNING as i32,
        "the exec ended before CloseIO"
    );
    client
        .close_io(
            ttrpc_ctx(),
            &api::CloseIORequest {
                id: id.clone(),
                exec_id: "closeio".into(),
                stdin: true,
                ..Default::default()
            },
        )
        .expect("CloseIO");
    let w = client
        .wait(
            ttrpc_ctx(),
            &api::WaitRequest {
                id: id.clone(),
                exec_id: "closeio".into(),
                ..Default::default()
            },
        )
        .expect("Wait for the exec");
    assert_eq!(w.exit_status, 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "x\neof\n");
    drop(writer);
    client
        .delete(
            ttrpc_ctx(),
            &api::DeleteRequest {
                id: id.clone(),
                exec_id: "closeio".into(),
                ..Default::default()
            },
        )
        .expect("Delete the exec");
    drop(client);

    kill_and_delete(ctd, &id);
    wait_no_shims(ctd);
    assert_no_leaks(&id);
}

fn task_status_exec(client: &containerd_shim_protos::TaskClient, id: &str, exec_id: &str) -> i32 {
    client
        .state(
            ttrpc_ctx(),
            &api::StateRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .expect("State")
        .status
        .value()
}

/// `ctr events`, running, its lines collected.
struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Events {
    fn watch(ctd: &Containerd) -> Events {
        let mut child = ctd
            .ctr_cmd()
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start `ctr events`");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // Subscribed once it has connected; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Events { child, lines }
    }

    /// Topics of the events that mention `id`, in order.
    fn topics_of(&self, id: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(id))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .map(String::from)
            .collect()
    }

    /// Waits until every topic of `want` was seen for `id`.
    fn wait_for(&self, id: &str, want: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.topics_of(id);
            if want.iter().all(|w| seen.iter().any(|s| s == w)) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "events for {id}: saw {seen:?}, want all of {want:?}\nall lines:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_reach_containerd() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let events = Events::watch(ctd);

    let id = unique_id("shim-events");
    run_detached(ctd, &id, &[], &["/bin/sleep", "600"]);
    ctd.ctr_ok(&["task", "exec", "--exec-id", "ex1", &id, "/bin/true"]);
    ctd.ctr_ok(&["task", "pause", &id]);
    wait_task_status(ctd, &id, "PAUSED");
    ctd.ctr_ok(&["task", "resume", &id]);
    wait_task_status(ctd, &id, "RUNNING");
    kill_and_delete(ctd, &id);
    let seen = events.wait_for(
        &id,
        &[
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ],
    );
    // In the order they happened.
    let pos = |t: &str| seen.iter().position(|s| s == t).unwrap();
    assert!(pos("/tasks/create") < pos("/tasks/start"), "{seen:?}");
    assert!(pos("/tasks/start") < pos("/tasks/exec-added"), "{seen:?}");
    assert!(
        pos("/tasks/exec-added") < pos("/tasks/exec-started"),
        "{seen:?}"
    );
    assert!(pos("/tasks/paused") < pos("/tasks/resumed"), "{seen:?}");
    assert!(pos("/tasks/resumed") < pos("/tasks/delete"), "{seen:?}");
    // Two exits: the exec's, then the init's.
    assert_eq!(
        seen.iter().filter(|s| *s == "/tasks/exit").count(),
        2,
        "{seen:?}"
    );
    assert_no_leaks(&id);

    // OOM: a shell that doubles a string until its 16 MiB limit kills it.
    let id = unique_id("shim-oom");
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        NATIVE,
        "--memory-limit",
        "16777216",
        IMAGE,
        &id,
        "/bin/sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        command::format_output(&out)
    );
    let seen = events.wait_for(&id, &["/tasks/oom", "/tasks/exit", "/tasks/delete"]);
    let pos = |t: &str| seen.iter().position(|s| s == t).unwrap();
    assert!(pos("/tasks/oom") < pos("/tasks/delete"), "{seen:?}");
    drop(events);
    wait_no_shims(ctd);
    assert_no_leaks(&id);
}

/// The one husk shim serving `ctd` (panics unless there is exactly one).
fn the_shim(ctd: &Containerd) -> u32 {
    let pids = shim_pids(ctd);
    assert_eq!(pids.len(), 1, "shims: {pids:?}");
    pids[0]
}

/// Waits until `pid` is gone from /proc; panics (naming its state) if it
/// is still there after `within`.
fn wait_gone(pid: u32, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let Ok(stat) = stat else { return };
        if Instant::now() >= deadline {
            panic!("{what} (pid {pid}) is still there: {stat}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn orphans_without_a_pid_namespace_are_reaped() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    // Sharing the host's pid namespace, a container's orphans are
    // reparented to the nearest subreaper: the shim.
    // (Ours, not pid 1's: the host's pid 1 may refuse to be inspected.)
    let ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    let host_pid = ["--with-ns", ns.as_str()];

    // 1. A running container whose subshell leaves an orphan that exits
    //    two seconds later: the shim reaps it while the init runs on.
    let id = unique_id("shim-orphan");
    run_detached(
        ctd,
        &id,
        &host_pid,
        &["/bin/sh", "-c", "(sleep 2 &); exec sleep 600"],
    );
    let shim = the_shim(ctd);
    let init = task_pid(ctd, &id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let orphan = loop {
        let others: Vec<(u32, char)> = children_of(shim)
            .into_iter()
            .filter(|c| c.0 != init)
            .collect();
        if let Some(o) = others.first() {
            break o.0;
        }
        assert!(
            Instant::now() < deadline,
            "the orphan never showed up under the shim {shim}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_gone(orphan, Duration::from_secs(10), "the orphan's zombie");
    assert_eq!(children_of(shim), vec![(init, 'S')]);
    assert_eq!(task_status(ctd, &id).as_deref(), Some("RUNNING"));
    kill_and_delete(ctd, &id);
    wait_no_shims(ctd);
    assert_no_leaks(&id);

    // 2. An init that starts a background child and exits: the child is
    //    killed with the container and reaped, no zombie left behind.
    let id = unique_id("shim-orphan-exit");
    run_detached(
        ctd,
        &id,
        &host_pid,
        &["/bin/sh", "-c", "sleep 600 & sleep 1; exit 3"],
    );
    let shim = the_shim(ctd);
    let init = task_pid(ctd, &id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let child = loop {
        let found = children_of(init).into_iter().find(|c| {
            std::fs::read(format!("/proc/{}/cmdline", c.0)).is_ok_and(|b| b == b"sleep\x00600\x00")
        });
        if let Some(c) = found {
            break c.0;
        }
        assert!(
            Instant::now() < deadline,
            "the init's background child never showed up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_task_status(ctd, &id, "STOPPED");
    wait_gone(child, Duration::from_secs(10), "the background child");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(shim).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stopped container's shim still has children: {:?}",
            children_of(shim)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let del = ctd.ctr_ok(&["task", "delete", &id]);
    assert!(del.contains('3') || del.is_empty(), "{del}");
    ctd.ctr_ok(&["container", "delete", &id]);
    wait_no_shims(ctd);
    assert_no_leaks(&id);
}
