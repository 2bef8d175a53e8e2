//! Must show: the CRI plugin of containerd 1.6, with runtime handler `husk`
//! (and `husk-hardened`), driven through the CRI API as kubelet drives it:
//! RunPodSandbox, then CreateContainer and StartContainer twice, put the
//! pod's sandbox and both containers into ONE shim process; ExecSync,
//! container logs and exit codes work through it; and stopping and
//! removing everything leaves no shim, mount, cgroup or process.
//!
//! Under `husk-hardened` the pod is one user namespace: the containers join
//! the sandbox's, and share its uid range until the last of them is gone.
//!
//! The runtime handlers are examples/containerd/config.toml itself, so this
//! test also proves the snippet users copy. The pod uses the node's network
//! (no CNI network); the sandbox image is busybox sleeping forever.

#[path = "shim_common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{children_of, shim_dir, wait_no_shims, HARDENED_BIN, SHIM_BIN};
use husk_tests::containerd::has_cap_sys_resource;
use husk_tests::cri::{self, api, api::NamespaceMode, CriClient, CRI_NAMESPACE};
use husk_tests::leaks::{self, assert_no_leaks};
use husk_tests::{require_root, unique_id, Containerd, ContainerdOptions, ImageBuilder};

/// The runtime handlers users put into containerd's config.
const EXAMPLE_CONFIG: &str = include_str!("../../examples/containerd/config.toml");
const PAUSE_IMAGE: &str = "husk.test/pause:latest";
const BUSYBOX_IMAGE: &str = "husk.test/busybox:latest";

/// containerd with the CRI plugin, husk's handlers from the example config,
/// and the pause and busybox images in the `k8s.io` namespace.
fn cri_containerd(tmp: &Path) -> Containerd {
    // The example's tables; the harness writes its own `version = 2`.
    let runtimes: String = EXAMPLE_CONFIG
        .lines()
        .filter(|l| !l.trim_start().starts_with("version"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(runtimes.contains("runtimes.husk]"), "{runtimes}");
    let ctd = Containerd::start_with(ContainerdOptions {
        enable_cri: true,
        cri_sandbox_image: PAUSE_IMAGE.to_string(),
        extra_config: runtimes,
        path_prepend: vec![shim_dir()],
        ..Default::default()
    });
    let pause = tmp.join("pause.tar");
    cri::sandbox_image().write_tar(&pause);
    ctd.import_image_into(CRI_NAMESPACE, &pause, "husk.test/pause");
    let busybox = tmp.join("busybox.tar");
    ImageBuilder::busybox().write_tar(&busybox);
    ctd.import_image_into(CRI_NAMESPACE, &busybox, "husk.test/busybox");
    ctd
}

/// Panics with a CRI call's error and the tail of containerd's log.
fn failed(ctd: &Containerd, what: &str, e: cri::Status) -> ! {
    let log = ctd.log();
    let lines: Vec<&str> = log.lines().collect();
    panic!(
        "CRI {what} failed: {e}\n--- containerd log (tail) ---\n{}",
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// husk shim daemons (of binary `bin`) serving this containerd.
fn shims_of(ctd: &Containerd, bin: &str) -> Vec<u32> {
    let address = ctd.address().to_string_lossy().into_owned();
    leaks::processes_matching(&address)
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim-husk"))
        .inspect(|p| assert!(p.cmdline.contains(bin), "a shim other than {bin}: {p}"))
        .map(|p| p.pid)
        .collect()
}

/// The shim address containerd recorded for task `id` in `k8s.io`.
fn task_address(ctd: &Containerd, id: &str) -> String {
    let path = ctd
        .state()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(id)
        .join("address");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn container_status(cri: &CriClient, ctd: &Containerd, id: &str) -> api::ContainerStatus {
    let req = api::ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    };
    cri.runtime(|mut c| async move { c.container_status(req).await })
        .unwrap_or_else(|e| failed(ctd, "ContainerStatus", e))
        .status
        .expect("ContainerStatus without a status")
}

/// Waits until `<log_dir>/<name>.log` holds `want` as a message.
fn wait_log(log_dir: &Path, name: &str, want: &str) {
    let path = log_dir.join(format!("{name}.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if cri::log_messages(&text).iter().any(|m| m == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} never reached {}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn oom_score_adj(pid: u32) -> i32 {
    let path = format!("/proc/{pid}/oom_score_adj");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
}

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PPid in /proc/{pid}/status"))
}

/// The whole pod lifecycle through runtime handler `handler`, served by
/// shim binary `bin`.
fn pod_in_one_shim(handler: &str, bin: &str) {
    let hardened = bin == HARDENED_BIN;
    let tmp = tempfile::Builder::new()
        .prefix("husk-cri-")
        .tempdir()
        .unwrap();
    let ctd = cri_containerd(tmp.path());
    let cri = CriClient::connect(&ctd.address());
    // The directories above the pod's bind sources (hosts, resolv.conf,
    // /dev/shm): containerd's private ones, which no shim may loosen.
    let private_dirs = [
        ctd.dir().join("root"),
        ctd.state().join("io.containerd.grpc.v1.cri"),
    ];
    let modes = || -> Vec<u32> {
        use std::os::unix::fs::PermissionsExt;
        private_dirs
            .iter()
            .map(|d| std::fs::metadata(d).map_or(0, |m| m.permissions().mode() & 0o7777))
            .collect()
    };
    let modes_before = modes();

    let version = cri
        .runtime(|mut c| async move { c.version(api::VersionRequest::default()).await })
        .unwrap_or_else(|e| failed(&ctd, "Version", e));
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    // The CRI plugin resolves both images locally (no registry here).
    for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let st = cri
            .image(|mut c| async move { c.image_status(req).await })
            .unwrap_or_else(|e| failed(&ctd, "ImageStatus", e));
        assert!(st.image.is_some(), "the CRI plugin does not see {image}");
    }

    // RunPodSandbox: the sandbox container starts the pod's shim.
    let log_dir = tmp.path().join("logs");
    let pod_config = cri::host_network_pod(&unique_id("cri-pod"), &log_dir);
    let req = api::RunPodSandboxRequest {
        config: Some(pod_config.clone()),
        runtime_handler: handler.to_string(),
    };
    let sandbox = cri
        .runtime(|mut c| async move { c.run_pod_sandbox(req).await })
        .unwrap_or_else(|e| failed(&ctd, "RunPodSandbox", e))
        .pod_sandbox_id;
    let shims = shims_of(&ctd, bin);
    assert_eq!(shims.len(), 1, "shims after RunPodSandbox: {shims:?}");
    let shim = shims[0];

    // Two containers: one sleeps in the sandbox's pid namespace (killed
    // on stop), one has a pid namespace of its own, logs a line and exits
    // 0 on SIGTERM.
    let specs = [
        ("sleeper", vec!["/bin/sleep", "86400"], NamespaceMode::Pod),
        (
            "logger",
            vec![
                "/bin/sh",
                "-c",
                "echo hello from logger; trap 'exit 0' TERM; while :; do sleep 1; done",
            ],
            NamespaceMode::Container,
        ),
    ];
    let mut ids = Vec::new();
    for (name, command, pid_mode) in &specs {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::container(name, BUSYBOX_IMAGE, command, *pid_mode)),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = cri
            .runtime(|mut c| async move { c.create_container(req).await })
            .unwrap_or_else(|e| failed(&ctd, "CreateContainer", e))
            .container_id;
        let req = api::StartContainerRequest {
            container_id: id.clone(),
        };
        cri.runtime(|mut c| async move { c.start_container(req).await })
            .unwrap_or_else(|e| failed(&ctd, "StartContainer", e));
        ids.push(id);
    }

    // One shim serves the sandbox and both containers.
    assert_eq!(shims_of(&ctd, bin), vec![shim], "a second shim was started");
    let sandbox_address = task_address(&ctd, &sandbox);
    let sandbox_pid = cri.sandbox_pid(&sandbox);
    assert_eq!(parent_of(sandbox_pid), shim, "the sandbox's init");
    // The shim applied the spec's oomScoreAdj: the CRI plugin's -998 for
    // sandboxes, or containerd's own score where the host withholds
    // CAP_SYS_RESOURCE (restrict_oom_score_adj, see the harness).
    let want_oom = if has_cap_sys_resource() {
        -998
    } else {
        oom_score_adj(ctd.pid().expect("containerd runs"))
    };
    assert_eq!(
        oom_score_adj(sandbox_pid),
        want_oom,
        "the sandbox's oom_score_adj"
    );
    let mut pids = vec![sandbox_pid];
    for id in &ids {
        let st = container_status(&cri, &ctd, id);
        assert_eq!(
            st.state,
            api::ContainerState::ContainerRunning as i32,
            "{id}: {st:?}"
        );
        assert_eq!(task_address(&ctd, id), sandbox_address, "{id}'s shim");
        let pid = cri.container_pid(id);
        assert_eq!(parent_of(pid), shim, "{id}'s init");
        pids.push(pid);
    }
    let children: Vec<u32> = children_of(shim).into_iter().map(|c| c.0).collect();
    for pid in &pids {
        assert!(
            children.contains(pid),
            "{pid} is not among the shim's children {children:?}"
        );
    }
    let distinct: std::collections::HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    if hardened {
        hardened_pod_namespaces(&sandbox, &ids, &pids);
    }
    assert_eq!(modes(), modes_before, "permissions of {private_dirs:?}");
    wait_log(&log_dir, "logger", "hello from logger");

    // ExecSync runs in each container's namespaces, through the same
    // shim: PID 1 is the pause process where the pod's pid namespace is
    // shared, the container's own init where it is not.
    for (id, pid1) in [
        (&ids[0], "/bin/sleep\0inf\0"),
        (&ids[1], "/bin/sh\0-c\0echo hello"),
    ] {
        let req = api::ExecSyncRequest {
            container_id: id.clone(),
            cmd: [
                "/bin/sh",
                "-c",
                "echo out; cat /proc/1/cmdline; echo err >&2; exit 3",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 30,
        };
        let exec = cri
            .runtime(|mut c| async move { c.exec_sync(req).await })
            .unwrap_or_else(|e| failed(&ctd, "ExecSync", e));
        let stdout = String::from_utf8_lossy(&exec.stdout);
        assert_eq!(exec.exit_code, 3, "{id}: {exec:?}");
        assert!(
            stdout.starts_with(&format!("out\n{pid1}")),
            "{id}: {stdout:?}"
        );
        assert_eq!(exec.stderr, b"err\n", "{id}");
    }
    assert_eq!(shims_of(&ctd, bin), vec![shim]);

    // Stop: SIGKILL at once for the sleeper, SIGTERM for the logger (which
    // exits 0 on it). Exit codes reach the CRI status.
    for (id, timeout, want) in [(&ids[0], 0, 137), (&ids[1], 30, 0)] {
        let req = api::StopContainerRequest {
            container_id: id.clone(),
            timeout,
        };
        cri.runtime(|mut c| async move { c.stop_container(req).await })
            .unwrap_or_else(|e| failed(&ctd, "StopContainer", e));
        let st = container_status(&cri, &ctd, id);
        assert_eq!(
            st.state,
            api::ContainerState::ContainerExited as i32,
            "{id}: {st:?}"
        );
        assert_eq!(st.exit_code, want, "{id}: {st:?}");
        let req = api::RemoveContainerRequest {
            container_id: id.clone(),
        };
        cri.runtime(|mut c| async move { c.remove_container(req).await })
            .unwrap_or_else(|e| failed(&ctd, "RemoveContainer", e));
    }
    // The pod's shim outlives its containers while the sandbox runs.
    assert_eq!(shims_of(&ctd, bin), vec![shim]);

    let req = api::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    };
    cri.runtime(|mut c| async move { c.stop_pod_sandbox(req).await })
        .unwrap_or_else(|e| failed(&ctd, "StopPodSandbox", e));
    let req = api::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    };
    cri.runtime(|mut c| async move { c.remove_pod_sandbox(req).await })
        .unwrap_or_else(|e| failed(&ctd, "RemovePodSandbox", e));

    // Nothing is left: no shim, no task, no mount, cgroup or process.
    wait_no_shims(&ctd);
    let socket = sandbox_address.trim_start_matches("unix://");
    assert!(
        !Path::new(socket).exists(),
        "shim socket {socket} left behind"
    );
    let pods = cri
        .runtime(|mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
        })
        .unwrap_or_else(|e| failed(&ctd, "ListPodSandbox", e));
    assert!(pods.items.is_empty(), "{pods:?}");
    let containers = cri
        .runtime(|mut c| async move {
            c.list_containers(api::ListContainersRequest::default())
                .await
        })
        .unwrap_or_else(|e| failed(&ctd, "ListContainers", e));
    assert!(containers.containers.is_empty(), "{containers:?}");
    assert_eq!(ctd.ctr_ok(&["-n", CRI_NAMESPACE, "tasks", "ls", "-q"]), "");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its pod"
        );
    }
    for id in ids.iter().chain([&sandbox]) {
        assert_no_leaks(id);
        let state = Path::new("/run/containerd/husk")
            .join(CRI_NAMESPACE)
            .join(id);
        assert!(!state.exists(), "{} left behind", state.display());
    }
    let mounts = leaks::mount_points_under(ctd.dir());
    assert!(
        mounts.is_empty(),
        "mounts left under containerd's dirs: {mounts:?}"
    );
    if hardened {
        // The pod's range went with its last member.
        let record = uid_ranges();
        for id in ids.iter().chain([&sandbox]) {
            assert!(
                !record.to_string().contains(&format!("\"{id}\"")),
                "{id} still holds a uid range: {record}"
            );
        }
    }
}

/// The hardened allocator's record (the default profile's state dir).
fn uid_ranges() -> serde_json::Value {
    let dir = husk_runtime::hardened::Profile::default()
        .user_namespace
        .state_dir;
    let path = dir.join("allocations.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "{}".into());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

fn namespace_of(pid: u32, ns: &str) -> String {
    let path = format!("/proc/{pid}/ns/{ns}");
    let link = std::fs::read_link(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    link.to_string_lossy().into_owned()
}

/// A hardened pod is one user namespace, mapped to one uid range of its
/// own that the allocator records for the sandbox with every container
/// as a member; the containers share the sandbox's network, IPC and UTS
/// namespaces (the pod asked for the host's, which hardened never gives)
/// and its pid namespace where the pod's is shared. `pids`: the sandbox's
/// init, then the containers' (`ids`: sleeper sharing the pod's pid
/// namespace, logger with its own).
fn hardened_pod_namespaces(sandbox: &str, ids: &[String], pids: &[u32]) {
    let sandbox_pid = pids[0];
    let host_user = namespace_of(std::process::id(), "user");
    let map = std::fs::read_to_string(format!("/proc/{sandbox_pid}/uid_map")).unwrap();
    let fields: Vec<u64> = map
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(fields.len(), 3, "{map}");
    assert!(
        fields[0] == 0 && fields[1] >= 1 << 20 && fields[2] == 65536,
        "{map}"
    );
    assert_ne!(namespace_of(sandbox_pid, "user"), host_user);
    for (i, pid) in pids[1..].iter().enumerate() {
        for ns in ["user", "net", "ipc", "uts"] {
            assert_eq!(
                namespace_of(*pid, ns),
                namespace_of(sandbox_pid, ns),
                "{}: {ns} namespace",
                ids[i]
            );
        }
        for f in ["uid_map", "gid_map"] {
            let theirs = std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap();
            assert_eq!(theirs, map, "{}: {f}", ids[i]);
        }
        let (pid_ns, own) = (namespace_of(*pid, "pid"), namespace_of(sandbox_pid, "pid"));
        assert_eq!(
            pid_ns == own,
            i == 0,
            "{}: pid namespace {pid_ns} vs {own}",
            ids[i]
        );
    }
    let record = uid_ranges();
    let members: Vec<String> = record["ranges"][sandbox]["members"]
        .as_object()
        .unwrap_or_else(|| panic!("no range for sandbox {sandbox}: {record}"))
        .keys()
        .cloned()
        .collect();
    let mut want = ids.to_vec();
    want.push(sandbox.to_string());
    want.sort();
    assert_eq!(members, want, "{record}");
}

#[test]
fn cri_pod_in_one_husk_shim() {
    require_root!();
    pod_in_one_shim("husk", SHIM_BIN);
}

// Under the hardened profile the pod shares one user namespace and uid
// range, the sandbox's (see `hardened_pod_namespaces`).
#[test]
fn cri_pod_in_one_hardened_shim() {
    require_root!();
    pod_in_one_shim("husk-hardened", HARDENED_BIN);
}
