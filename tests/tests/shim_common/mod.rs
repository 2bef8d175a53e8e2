//! Shared by the `shim_*` tests: a private containerd 1.6 that finds
//! husk's shim binaries (`target/<profile>/containerd-shim-husk-v2` and
//! `-hardened-v2`) first on its `PATH`, with a busybox image imported.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::runtime_bin::profile_dir_of;
use husk_tests::{Containerd, ContainerdOptions};

pub const IMAGE: &str = "husk.test/busybox:latest";
pub const NATIVE: &str = "io.containerd.husk.v2";
pub const HARDENED: &str = "io.containerd.husk-hardened.v2";
pub const SHIM_BIN: &str = "containerd-shim-husk-v2";
pub const HARDENED_BIN: &str = "containerd-shim-husk-hardened-v2";

/// `target/<profile>`, where cargo put the shim binaries. Panics with a
/// build instruction if they are missing.
pub fn shim_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = profile_dir_of(&exe);
    for bin in [SHIM_BIN, HARDENED_BIN] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}: build it first (`cargo build --workspace`)",
            dir.display()
        );
    }
    dir
}

pub struct Env {
    pub ctd: Containerd,
    pub tmp: tempfile::TempDir,
}

pub fn containerd_with(opts: ContainerdOptions) -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("husk-shimtest-")
        .tempdir()
        .unwrap();
    let mut opts = opts;
    opts.path_prepend.insert(0, shim_dir());
    let ctd = Containerd::start_with(opts);
    ctd.import_busybox(tmp.path());
    Env { ctd, tmp }
}

pub fn containerd() -> Env {
    containerd_with(ContainerdOptions::default())
}

/// `ctr task ls` lines as (id, pid, status).
pub fn tasks(ctd: &Containerd) -> Vec<(String, u32, String)> {
    ctd.ctr_ok(&["task", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
            ))
        })
        .collect()
}

pub fn task_status(ctd: &Containerd, id: &str) -> Option<String> {
    tasks(ctd).into_iter().find(|t| t.0 == id).map(|t| t.2)
}

pub fn wait_task_status(ctd: &Containerd, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = task_status(ctd, id);
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "task {id} is {s:?}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ctr run -d --runtime RUNTIME IMAGE ID /bin/sleep 600`: a long-lived
/// task to drive. Does not wait for it (callers that need it running use
/// [`wait_task_status`]).
pub fn run_sleeper(ctd: &Containerd, runtime: &str, id: &str) {
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

/// Pids of husk shim daemons serving this containerd.
pub fn shim_pids(ctd: &Containerd) -> Vec<u32> {
    let address = ctd.address().to_string_lossy().into_owned();
    husk_tests::leaks::processes_matching(&address)
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim-husk"))
        .map(|p| p.pid)
        .collect()
}

/// Waits until no husk shim serves this containerd.
pub fn wait_no_shims(ctd: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shim_pids(ctd).is_empty() {
        assert!(
            Instant::now() < deadline,
            "shims still running: {:?}",
            shim_pids(ctd)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs task `id` (if it still runs), waits for it to stop, and
/// deletes the task and the container.
pub fn kill_and_delete(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    wait_task_status(ctd, id, "STOPPED");
    ctd.ctr_ok(&["task", "delete", id]);
    ctd.ctr_ok(&["container", "delete", id]);
}

/// [`kill_and_delete`] of the last container, then: its shim is gone and
/// nothing of it is left on the host.
pub fn kill_delete_and_check(ctd: &Containerd, id: &str) {
    kill_and_delete(ctd, id);
    wait_no_shims(ctd);
    husk_tests::leaks::assert_no_leaks(id);
}

/// The address of the shim serving container `id` (containerd's
/// `default` namespace), from the `address` file in its bundle.
pub fn shim_address(ctd: &Containerd, id: &str) -> String {
    let path = ctd
        .state()
        .join("io.containerd.runtime.v2.task/default")
        .join(id)
        .join("address");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A ttrpc Task client on a shim's socket.
pub fn task_client(address: &str) -> containerd_shim_protos::TaskClient {
    containerd_shim_protos::TaskClient::new(
        ttrpc::Client::connect(address)
            .unwrap_or_else(|e| panic!("connecting to the shim at {address}: {e}")),
    )
}

/// A ttrpc context with a ten-second deadline.
pub fn ttrpc_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

/// The processes whose parent is `pid`, with their state letter (`Z` for
/// a zombie), from /proc/*/stat.
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(u32, char)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // After the command name in parentheses: state, ppid, ...
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid: u32 = f.next()?.parse().ok()?;
            (ppid == pid).then_some((child, state))
        })
        .collect();
    out.sort();
    out
}

/// Whether process `pid` runs from a binary on a read-only mount (what a
/// sealed shim runs from: husk_runtime::sealed_exe).
pub fn exe_on_read_only_mount(pid: u32) -> bool {
    let exe = std::ffi::CString::new(format!("/proc/{pid}/exe")).unwrap();
    // SAFETY: statvfs is plain data; all zeros is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: exe is a live C string and stat a valid out-struct.
    let r = unsafe { libc::statvfs(exe.as_ptr(), &mut stat) };
    assert_eq!(r, 0, "statvfs /proc/{pid}/exe");
    stat.f_flag & libc::ST_RDONLY != 0
}
