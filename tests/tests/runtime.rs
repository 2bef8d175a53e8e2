//! The native runtime on the real kernel: each isolation and lifecycle
//! promise of `husk-runtime` has its own test, driven through the CLI the
//! way containerd's runc shim drives it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_tests::command::{stderr_text as stderr, stdout_text as stdout};
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{require_root, unique_id, Bundle, HuskRuntime};
use oci_spec::runtime::{
    HookBuilder, HooksBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder,
};

/// Creates and starts a long-running container; returns its host pid.
fn start_detached(rt: &HuskRuntime, bundle: &Bundle, id: &str) -> i32 {
    rt.run_ok(&[
        "run",
        "--detach",
        "--bundle",
        bundle.path().to_str().unwrap(),
        id,
    ]);
    rt.state(id)["pid"].as_i64().expect("state has a pid") as i32
}

fn wait_stopped(rt: &HuskRuntime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.state(id)["status"] != "stopped" {
        assert!(Instant::now() < deadline, "{id} did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn init_is_pid_1_and_host_processes_are_invisible() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("pid");
    let host_pid = std::process::id();
    let script = format!(
        "echo pid=$$; ls /proc | grep -c '^[0-9]'; test -e /proc/{host_pid} && echo host-visible; true"
    );
    let bundle = Bundle::busybox(&["sh", "-c", &script]);
    let out = stdout(&rt.run_bundle_ok(&bundle, &id));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"), "{out}");
    let visible: usize = lines.next().unwrap().trim().parse().unwrap();
    // sh, ls, grep at most: no host process.
    assert!(visible <= 3, "{visible} processes visible: {out}");
    assert!(!out.contains("host-visible"), "{out}");
    assert_no_leaks(&id);
}

#[test]
fn container_has_its_own_hostname() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("uts");
    let mut bundle = Bundle::busybox(&["hostname"]);
    bundle.update_spec(|s| {
        s.set_hostname(Some("husk-box".into()));
        s.set_domainname(Some("husk.test".into()));
    });
    assert_eq!(stdout(&rt.run_bundle_ok(&bundle, &id)).trim(), "husk-box");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "husk-box");
}

#[test]
fn network_namespace_holds_only_lo() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("net");
    let bundle = Bundle::busybox(&[
        "sh",
        "-c",
        "ls /sys/class/net; tail -n +3 /proc/net/dev | cut -d: -f1",
    ]);
    let out = stdout(&rt.run_bundle_ok(&bundle, &id));
    let names: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(names, vec!["lo", "lo"], "{out}");
}

#[test]
fn ipc_objects_of_the_host_are_invisible() {
    require_root!();
    // A SysV shared memory segment on the host, with a recognisable key.
    let key = 0x4853_0000 | (std::process::id() as i32 & 0xffff);
    // SAFETY: plain syscalls creating and later removing our own segment.
    let shmid = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | 0o600) };
    assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
    let host_view = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let rt = HuskRuntime::new();
    let id = unique_id("ipc");
    let bundle = Bundle::busybox(&["cat", "/proc/sysvipc/shm"]);
    let out = rt.run_bundle(&bundle, &id);
    // SAFETY: removing the segment created above.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    assert!(out.status.success(), "{}", stderr(&out));
    let key_text = format!("{key}");
    assert!(
        host_view.contains(&key_text),
        "the host does not see its own segment"
    );
    assert!(
        !stdout(&out).contains(&key_text),
        "container sees the host segment: {}",
        stdout(&out)
    );
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("oom");
    // dd allocates its whole block: 256 MiB against a 32 MiB limit.
    let mut bundle = Bundle::busybox(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]);
    bundle.update_spec(|s| {
        let memory = LinuxMemoryBuilder::default()
            .limit(32 * 1024 * 1024i64)
            .swap(32 * 1024 * 1024i64)
            .build()
            .unwrap();
        let resources = LinuxResourcesBuilder::default()
            .memory(memory)
            .build()
            .unwrap();
        s.linux_mut()
            .as_mut()
            .unwrap()
            .set_resources(Some(resources));
    });
    let out = rt.output(&[
        "run",
        "--keep",
        "--bundle",
        bundle.path().to_str().unwrap(),
        &id,
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "not killed by SIGKILL: {}",
        stderr(&out)
    );
    let events = rt.run_ok(&["events", "--stats", &id]);
    let event: serde_json::Value = serde_json::from_slice(&events.stdout).unwrap();
    assert!(
        event["data"]["oom_kills"].as_u64().unwrap_or(0) >= 1,
        "OOM kill not reported: {event}"
    );
    rt.run_ok(&["delete", &id]);
    assert_no_leaks(&id);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("pids");
    let script = "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; \
                  echo running=$(ls /proc | grep -c '^[0-9]')";
    let mut bundle = Bundle::busybox(&["sh", "-c", script]);
    bundle.update_spec(|s| {
        let pids = LinuxPidsBuilder::default().limit(16i64).build().unwrap();
        let resources = LinuxResourcesBuilder::default().pids(pids).build().unwrap();
        s.linux_mut()
            .as_mut()
            .unwrap()
            .set_resources(Some(resources));
    });
    let out = rt.run_bundle(&bundle, &id);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("can't fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
    if let Some(n) = text.lines().find_map(|l| l.strip_prefix("running=")) {
        let n: u32 = n.trim().parse().unwrap();
        assert!(n <= 16, "{n} processes despite pids.max 16");
    }
    assert_no_leaks(&id);
}

#[test]
fn readonly_rootfs_refuses_writes() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("ro");
    let mut bundle = Bundle::busybox(&[
        "sh",
        "-c",
        "touch /new-file && echo wrote; echo tmp-ok > /dev/shm/x && cat /dev/shm/x",
    ]);
    bundle.update_spec(|s| {
        let mut root = s.root().clone().unwrap();
        root.set_readonly(Some(true));
        s.set_root(Some(root));
    });
    let out = rt.run_bundle(&bundle, &id);
    assert!(!stdout(&out).contains("wrote"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    // Writable mounts on top still work.
    assert!(stdout(&out).contains("tmp-ok"), "{}", stdout(&out));
    assert!(!bundle.rootfs().join("new-file").exists());
}

#[test]
fn masked_proc_paths_are_empty() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("mask");
    // Every masked file that has content on the host reads empty inside;
    // every masked directory is empty.
    let masked: Vec<String> = Bundle::default_spec(&[])
        .linux()
        .as_ref()
        .unwrap()
        .masked_paths()
        .clone()
        .unwrap();
    let files: Vec<&String> = masked
        .iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| std::fs::read(p).is_ok_and(|c| !c.is_empty()))
        .collect();
    let dirs: Vec<&String> = masked
        .iter()
        .filter(|p| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
        .collect();
    assert!(
        !files.is_empty() && !dirs.is_empty(),
        "nothing to mask on this host: {masked:?}"
    );
    let mut script = String::new();
    for f in &files {
        script.push_str(&format!("echo {f}=$(cat {f} | wc -c);"));
    }
    for d in &dirs {
        script.push_str(&format!("echo {d}=$(ls -A {d} | wc -l);"));
    }
    script.push_str("echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sys-writable; true");
    let bundle = Bundle::busybox(&["sh", "-c", &script]);
    let out = stdout(&rt.run_bundle_ok(&bundle, &id));
    for p in files.iter().chain(&dirs) {
        assert!(out.contains(&format!("{p}=0")), "{p} is not masked: {out}");
    }
    assert!(
        !out.contains("sys-writable"),
        "/proc/sys is writable: {out}"
    );
}

#[test]
fn dropped_capabilities_forbid_mount() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("caps");
    let bundle = Bundle::busybox(&[
        "sh",
        "-c",
        "grep CapEff /proc/self/status; mount -t tmpfs none /tmp && echo mounted",
    ]);
    let out = rt.run_bundle(&bundle, &id);
    let text = stdout(&out);
    assert!(!text.contains("mounted"), "{text}");
    let err = stderr(&out).to_lowercase();
    assert!(
        err.contains("not permitted") || err.contains("permission denied"),
        "{err}"
    );
    // runc's default set: AUDIT_WRITE, KILL, NET_BIND_SERVICE = bits 29, 5, 10.
    let eff = text.split_whitespace().nth(1).unwrap();
    let eff = u64::from_str_radix(eff, 16).unwrap();
    assert_eq!(eff, (1 << 29) | (1 << 5) | (1 << 10), "CapEff {eff:x}");
}

#[test]
fn user_namespace_root_is_unprivileged_on_the_host() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("userns");
    let mut bundle = Bundle::busybox(&["sh", "-c", "id -u; cat /proc/self/uid_map; sleep 30"]);
    // The mapped root must be able to reach the bundle, as with runc.
    allow_traverse(bundle.path());
    // A bind source under a directory the mapped root cannot search: the
    // runtime opens it while still host root, and leaves the directory as
    // it was.
    use std::os::unix::fs::PermissionsExt;
    let private = tempfile::tempdir().unwrap();
    std::fs::create_dir(private.path().join("vol")).unwrap();
    std::fs::write(private.path().join("vol/hello"), "behind 0700\n").unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let volume: oci_spec::runtime::Mount = serde_json::from_value(serde_json::json!({
        "destination": "/home/husk",
        "type": "bind",
        "source": private.path().join("vol"),
        "options": ["rbind", "ro", "nosuid", "nodev"]
    }))
    .unwrap();
    bundle.update_spec(|s| {
        let mut mounts = s.mounts().clone().unwrap_or_default();
        mounts.push(volume);
        s.set_mounts(Some(mounts));
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(200000u32)
            .size(65536u32)
            .build()
            .unwrap();
        let linux = s.linux_mut().as_mut().unwrap();
        let mut nss = linux.namespaces().clone().unwrap();
        nss.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(nss));
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    });
    let pid = start_detached(&rt, &bundle, &id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("200000"),
        "{uid_line}"
    );
    let exec = rt.run_ok(&["exec", &id, "id", "-u"]);
    assert_eq!(stdout(&exec).trim(), "0");
    let exec = rt.run_ok(&["exec", &id, "cat", "/home/husk/hello"]);
    assert_eq!(stdout(&exec), "behind 0700\n");
    assert_eq!(
        mode(private.path()),
        0o700,
        "the runtime loosened the source's parent"
    );
    rt.run_ok(&["delete", "--force", &id]);
    assert_no_leaks(&id);
}

fn allow_traverse(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn exec_lands_in_the_same_namespaces() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("exec");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    let pid = start_detached(&rt, &bundle, &id);
    let kinds = ["pid", "net", "mnt", "uts", "ipc", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k};"))
        .collect();
    let out = rt.run_ok(&["exec", &id, "sh", "-c", &script]);
    let inside: Vec<String> = stdout(&out).lines().map(String::from).collect();
    let host: Vec<String> = kinds
        .iter()
        .map(|k| {
            std::fs::read_link(format!("/proc/{pid}/ns/{k}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(inside, host);
    // And the same cgroup: the exec'd process is counted in the container's pids.
    let pids = rt.run_ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /proc/self/cgroup | grep memory",
    ]);
    assert!(
        stdout(&pids).contains(&format!("husk-{id}")) || stdout(&pids).trim().ends_with(":/"),
        "{}",
        stdout(&pids)
    );
    // A different user for exec.
    let user = rt.run_ok(&["exec", "--user", "1000:1000", &id, "id"]);
    assert!(stdout(&user).contains("uid=1000"), "{}", stdout(&user));
    rt.run_ok(&["delete", "--force", &id]);
    assert_no_leaks(&id);
}

#[test]
fn exit_codes_propagate() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("exit");
    let bundle = Bundle::busybox(&["sh", "-c", "exit 42"]);
    assert_eq!(rt.run_bundle(&bundle, &id).status.code(), Some(42));
    let id = unique_id("exec-exit");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    start_detached(&rt, &bundle, &id);
    let out = rt.output(&["exec", &id, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    rt.run_ok(&["delete", "--force", &id]);
}

#[test]
fn signals_are_forwarded_and_reported() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sig");
    let bundle = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    // SIGTERM to a foreground `run` reaches the container's init.
    let mut child = rt
        .cmd(&["run", "--bundle", bundle.path().to_str().unwrap(), &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = husk_tests::command::wait_timeout(&mut child, Duration::from_secs(10))
        .expect("run did not exit");
    assert_eq!(status.code(), Some(7));

    // `kill` with SIGKILL: the init dies by the signal and the state says so.
    let id = unique_id("kill");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    start_detached(&rt, &bundle, &id);
    rt.run_ok(&["kill", &id, "KILL"]);
    wait_stopped(&rt, &id);
    rt.run_ok(&["delete", &id]);
    assert_no_leaks(&id);
}

#[test]
fn hooks_run_in_order() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("hooks");
    let logdir = tempfile::Builder::new()
        .prefix("husk-hooklog-")
        .tempdir()
        .unwrap();
    let log = logdir.path().join("log");
    let host_hook = |name: &str| {
        HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".into(),
                "-c".into(),
                format!("echo {name} >> {}", log.display()),
            ])
            .build()
            .unwrap()
    };
    // startContainer runs after pivot_root: its path and log are the container's.
    let container_hook = HookBuilder::default()
        .path("/bin/sh")
        .args(vec![
            "sh".into(),
            "-c".into(),
            "echo startContainer >> /hooklog/log".into(),
        ])
        .build()
        .unwrap();
    let mut bundle = Bundle::busybox(&["sh", "-c", "echo process >> /hooklog/log"]);
    bundle.update_spec(|s| {
        s.set_hooks(Some(
            HooksBuilder::default()
                .create_runtime(vec![host_hook("createRuntime")])
                .create_container(vec![host_hook("createContainer")])
                .start_container(vec![container_hook])
                .poststart(vec![host_hook("poststart")])
                .poststop(vec![host_hook("poststop")])
                .build()
                .unwrap(),
        ));
        let mut mounts = s.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/hooklog")
                .typ("bind")
                .source(logdir.path())
                .options(vec!["rbind".to_string(), "rw".into()])
                .build()
                .unwrap(),
        );
        s.set_mounts(Some(mounts));
    });
    stdout(&rt.run_bundle_ok(&bundle, &id));
    let order = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = order.lines().collect();
    // poststart races the process itself; everything else is ordered.
    let without_poststart: Vec<&str> = order
        .iter()
        .copied()
        .filter(|l| *l != "poststart")
        .collect();
    assert_eq!(
        without_poststart,
        vec![
            "createRuntime",
            "createContainer",
            "startContainer",
            "process",
            "poststop"
        ],
        "{order:?}"
    );
    let poststart = order
        .iter()
        .position(|l| *l == "poststart")
        .expect("poststart ran");
    let start_container = order.iter().position(|l| *l == "startContainer").unwrap();
    assert!(poststart > start_container, "{order:?}");
    assert_no_leaks(&id);
}

#[test]
fn delete_leaves_no_cgroup_mount_or_process() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("clean");
    let bundle = Bundle::busybox(&["sh", "-c", "sleep 30 & sleep 30"]);
    let pid = start_detached(&rt, &bundle, &id);
    let cgroup_dirs = husk_tests::leaks::cgroup_dirs_matching(&id);
    assert!(
        !cgroup_dirs.is_empty(),
        "the container has no cgroup named after it"
    );
    let procs = std::fs::read_to_string(
        cgroup_dirs
            .iter()
            .find(|d| d.starts_with("/sys/fs/cgroup/pids"))
            .unwrap()
            .join("cgroup.procs"),
    )
    .unwrap();
    assert_eq!(procs.lines().count(), 2, "{procs}");
    rt.run_ok(&["delete", "--force", &id]);
    // Dead, or a zombie waiting for whoever adopted the detached init.
    let gone = |p: i32| {
        !Path::new(&format!("/proc/{p}")).exists()
            || std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z"))
    };
    assert!(gone(pid), "init {pid} survived delete");
    for line in procs.lines() {
        let p: i32 = line.parse().unwrap();
        assert!(gone(p), "process {p} survived delete");
    }
    for dir in cgroup_dirs {
        assert!(!dir.exists(), "{} survived delete", dir.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(bundle.path().to_str().unwrap()),
        "a mount of the bundle survived"
    );
    assert!(
        rt.container_ids().is_empty(),
        "state left: {:?}",
        rt.container_ids()
    );
    assert_no_leaks(&id);
}

#[test]
fn create_start_state_pause_resume_kill_delete() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("life");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    let pidfile = bundle.path().join("pid");
    rt.run_ok(&[
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let state = rt.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        state["pid"].to_string()
    );
    rt.run_ok(&["start", &id]);
    assert_eq!(rt.state(&id)["status"], "running");
    rt.run_ok(&["pause", &id]);
    assert_eq!(rt.state(&id)["status"], "paused");
    let out = rt.output(&["exec", &id, "true"]);
    assert!(
        !out.status.success() && stderr(&out).contains("paused"),
        "{}",
        stderr(&out)
    );
    rt.run_ok(&["resume", &id]);
    assert_eq!(rt.state(&id)["status"], "running");
    let ps = rt.run_ok(&["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, vec![state["pid"].as_i64().unwrap() as i32]);
    let list = rt.run_ok(&["list", "--format", "json"]);
    assert!(stdout(&list).contains(&id));
    let out = rt.output(&["delete", &id]);
    assert!(
        !out.status.success() && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    rt.run_ok(&["kill", &id, "KILL"]);
    wait_stopped(&rt, &id);
    rt.run_ok(&["delete", &id]);
    assert_no_leaks(&id);
}

#[test]
fn terminal_through_console_socket() {
    require_root!();
    use std::os::unix::net::UnixListener;
    let rt = HuskRuntime::new();
    let id = unique_id("tty");
    let mut bundle = Bundle::busybox(&["sh", "-c", "tty; echo done"]);
    bundle.update_spec(|s| {
        let mut p = s.process().clone().unwrap();
        p.set_terminal(Some(true));
        s.set_process(Some(p));
    });
    let sockdir = tempfile::Builder::new()
        .prefix("husk-console-")
        .tempdir()
        .unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        receive_fd(&conn)
    });
    rt.run_ok(&[
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let master = receiver.join().unwrap();
    rt.run_ok(&["start", &id]);
    let mut text = String::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 256];
    // EIO once the container closes its side.
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if text.contains("done") {
            break;
        }
    }
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    wait_stopped(&rt, &id);
    rt.run_ok(&["delete", &id]);
}

#[test]
fn no_runtime_descriptor_leaks_into_the_container() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("fds");
    let bundle = Bundle::busybox(&["ls", "/proc/1/fd"]);
    let out = stdout(&rt.run_bundle_ok(&bundle, &id));
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fds,
        vec!["0", "1", "2", "3"],
        "ls itself holds 3; anything else leaked: {out}"
    );
}

#[test]
fn runtime_binary_cannot_be_overwritten_from_a_container() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sealed");
    let bundle = Bundle::busybox(&["true"]);
    let before = std::fs::read(rt.bin()).unwrap();
    rt.run_ok(&["create", "--bundle", bundle.path().to_str().unwrap(), &id]);
    // In created state the init is still runtime code, inside the container.
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "husk-init");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_ne!(
        exe,
        rt.bin(),
        "the init executes the runtime's file on disk"
    );

    // Root in the container tries to write through /proc/1/exe.
    let out = rt.output(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo pwned > /proc/1/exe && echo wrote",
    ]);
    assert!(!stdout(&out).contains("wrote"), "{}", stdout(&out));

    // CVE-2019-5736 proper: keep a handle on the init's executable, wait
    // until nothing executes it any more (so ETXTBSY no longer protects
    // it), then reopen it for writing.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/{pid}/exe"))
        .unwrap();
    rt.run_ok(&["delete", "--force", &id]);
    let overwrite = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"pwned"));
    let err = overwrite.expect_err("the runtime's executable was writable through its init");
    // A read-only detached mount (EROFS), or a sealed memfd (EPERM).
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EPERM)),
        "{err}"
    );
    assert_eq!(
        std::fs::read(rt.bin()).unwrap(),
        before,
        "the runtime binary changed"
    );
    assert_no_leaks(&id);
}

#[test]
fn spec_and_features_describe_the_runtime() {
    let rt = HuskRuntime::new();
    let dir = tempfile::Builder::new()
        .prefix("husk-spec-")
        .tempdir()
        .unwrap();
    rt.run_ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"][0], "sh");
    let out = rt.output(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("already exists"));
    let features: serde_json::Value =
        serde_json::from_slice(&rt.run_ok(&["features"]).stdout).unwrap();
    let nss = features["linux"]["namespaces"].as_array().unwrap();
    assert_eq!(nss.len(), 8);
    assert_eq!(features["linux"]["cgroup"]["v1"], true);
    let out = rt.output(&["--systemd-cgroup", "list"]);
    assert!(
        !out.status.success() && stderr(&out).contains("systemd"),
        "{}",
        stderr(&out)
    );
}

/// Receives the pty master a runtime sends to its `--console-socket`.
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just gave us this descriptor.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("the console socket received no descriptor");
}

#[test]
fn joins_an_existing_network_namespace_by_path() {
    require_root!();
    let rt = HuskRuntime::new();
    // The "pod sandbox": a container holding a network namespace.
    let sandbox = unique_id("pod");
    let sandbox_bundle = Bundle::busybox(&["sleep", "30"]);
    let pid = start_detached(&rt, &sandbox_bundle, &sandbox);
    let netns = format!("/proc/{pid}/ns/net");
    let id = unique_id("member");
    let mut bundle = Bundle::busybox(&["readlink", "/proc/self/ns/net"]);
    bundle.update_spec(|s| {
        let linux = s.linux_mut().as_mut().unwrap();
        let nss = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|ns| {
                if ns.typ() == LinuxNamespaceType::Network {
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .path(netns.clone())
                        .build()
                        .unwrap()
                } else {
                    ns
                }
            })
            .collect::<Vec<_>>();
        linux.set_namespaces(Some(nss));
    });
    let inside = stdout(&rt.run_bundle_ok(&bundle, &id));
    let expected = std::fs::read_link(&netns).unwrap();
    assert_eq!(inside.trim(), expected.to_str().unwrap());
    rt.run_ok(&["delete", "--force", &sandbox]);
    assert_no_leaks(&id);
    assert_no_leaks(&sandbox);
}

#[test]
fn time_and_cgroup_namespaces() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("timens");
    // A boot clock one day ahead, seen through /proc/uptime.
    let mut bundle = Bundle::busybox(&[
        "sh",
        "-c",
        "cut -d. -f1 /proc/uptime; cat /proc/self/cgroup | grep memory",
    ]);
    bundle.update_spec(|s| {
        let linux = s.linux_mut().as_mut().unwrap();
        let mut nss = linux.namespaces().clone().unwrap();
        nss.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Time)
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(nss));
        let mut offset = oci_spec::runtime::LinuxTimeOffset::default();
        offset.set_secs(Some(86400));
        linux.set_time_offsets(Some([("boottime".to_string(), offset)].into()));
    });
    let out = stdout(&rt.run_bundle_ok(&bundle, &id));
    let mut lines = out.lines();
    let inside: u64 = lines.next().unwrap().trim().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inside >= host as u64 + 86400 - 5,
        "uptime {inside} vs host {host}"
    );
    // Its own cgroup namespace: the container's cgroup is its root.
    assert_eq!(
        lines.next().map(|l| l.rsplit(':').next().unwrap()),
        Some("/"),
        "{out}"
    );
}

#[test]
fn exec_with_its_own_environment_and_capabilities() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("execenv");
    let bundle = Bundle::busybox(&["sleep", "30"]);
    start_detached(&rt, &bundle, &id);
    let out = rt.run_ok(&[
        "exec",
        "--env",
        "GREETING=hello",
        "--cap",
        "CAP_NET_ADMIN",
        "--cwd",
        "/etc",
        &id,
        "sh",
        "-c",
        "echo $GREETING $(pwd); grep CapEff /proc/self/status",
    ]);
    let text = stdout(&out);
    assert!(text.contains("hello /etc"), "{text}");
    let eff = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    let eff = u64::from_str_radix(eff, 16).unwrap();
    assert!(eff & (1 << 12) != 0, "CAP_NET_ADMIN missing from {eff:x}");
    rt.run_ok(&["delete", "--force", &id]);
}
