//! huskd's spare shims (docs/architecture.md, "Spare shims"): the next
//! container takes the spare (its id and shim are the spare's), a new one
//! is started, none outlives huskd (stopped, or `kill -9`'d and
//! restarted), a spare never serves a shim binary replaced on disk since
//! it started, and runc's shim is never spared.

mod core_common;

use std::time::{Duration, Instant};

use core_common::{alive, bin_dir, Huskd, IMAGE};
use husk_tests::require_root;

fn spares(d: &Huskd) -> Vec<(String, u32, String)> {
    d.spare_shims()
}

/// Waits for a spare other than `not`.
fn wait_spare(d: &Huskd, not: Option<&str>) -> (String, u32, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = spares(d).into_iter().find(|s| Some(s.0.as_str()) != not) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no spare shim came:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spare_dirs(d: &Huskd) -> Vec<String> {
    std::fs::read_dir(d.state.join("spares"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_next_container_takes_the_spare_and_a_new_one_comes() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let (id, pid, bin) = wait_spare(&d, None);
    assert!(bin.ends_with("containerd-shim-husk-v2"), "{bin}");
    assert!(alive(pid));
    assert_eq!(spare_dirs(&d), vec![id.clone()]);
    let got = d
        .husk_ok(&["run", "-d", IMAGE, "sleep", "1000"])
        .trim()
        .to_string();
    assert_eq!(got, id, "the container did not take the spare");
    d.wait_status(&id, "running");
    // Its shim is the spare's process, listed as the container's now, and
    // its directory became the bundle.
    let out = d.husk_ok(&["--format", "json", "shim", "ls"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["container"], id.as_str());
    assert_eq!(rows[0]["pid"], pid);
    assert!(d.bundle(&id).join("config.json").exists());
    let (next, next_pid, _) = wait_spare(&d, Some(&id));
    assert_ne!(next_pid, pid);
    // Output, exit code and --rm work through a spare as through a fresh
    // shim.
    let out = d.husk(&["run", "--rm", IMAGE, "sh", "-c", "echo from-spare; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-spare\n");
    wait_dead(next_pid);
    assert!(!d.bundle(&next).exists());
    d.husk_ok(&["rm", "-f", &id]);
    wait_dead(pid);
    husk_tests::leaks::assert_no_leaks(&id);
    husk_tests::leaks::assert_no_leaks(&next);
}

#[test]
fn spares_do_not_outlive_huskd() {
    require_root!();
    let mut d = Huskd::start();
    let (id, pid, _) = wait_spare(&d, None);
    // kill -9: the spare stays; the restarted huskd shuts it down and
    // removes its directory, then keeps a new one.
    d.kill9();
    assert!(alive(pid));
    d.spawn();
    wait_dead(pid);
    let (id2, pid2, _) = wait_spare(&d, Some(&id));
    assert_eq!(spare_dirs(&d), vec![id2.clone()]);
    husk_tests::leaks::assert_no_leaks(&id);
    // Stopped (SIGTERM), huskd shuts its spare down.
    let state = d.state.clone();
    drop(d);
    wait_dead(pid2);
    assert!(!state.join("spares").join(&id2).exists());
    husk_tests::leaks::assert_no_leaks(&id2);
}

#[test]
fn no_spares_with_spare_shims_0_nor_for_runc() {
    require_root!();
    let d = Huskd::start_with(&["--spare-shims", "0"]);
    d.import_busybox();
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(spares(&d).is_empty());
    assert!(spare_dirs(&d).is_empty());
    drop(d);

    let d = Huskd::start();
    d.import_busybox();
    let (native, _, _) = wait_spare(&d, None);
    d.husk_ok(&["run", "--rm", "--runtime", "runc", IMAGE, "true"]);
    // runc's shim does not serve husk.shim.v1.Shim: the spare tried for it
    // is shut down and none is kept for it.
    std::thread::sleep(Duration::from_millis(1500));
    let now = spares(&d);
    assert!(
        now.iter().all(|s| s.2.ends_with("containerd-shim-husk-v2")),
        "{now:?}"
    );
    assert_eq!(spare_dirs(&d), vec![native]);
}

#[test]
fn a_spare_of_a_shim_binary_replaced_on_disk_is_not_used() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("containerd-shim-husk-v2");
    std::fs::copy(bin_dir().join("containerd-shim-husk-v2"), &bin).unwrap();
    let runtime = format!("copy={}", bin.display());
    let d = Huskd::start_with(&["--runtime", &runtime, "--default-runtime", "copy"]);
    d.import_busybox();
    let (id, pid, spare_bin) = wait_spare(&d, None);
    assert_eq!(spare_bin, bin.to_string_lossy());
    // As an upgrade installs a shim: a new file renamed over the old one.
    let new = tmp.path().join("containerd-shim-husk-v2.new");
    std::fs::copy(&bin, &new).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    let got = d
        .husk_ok(&["run", "-d", IMAGE, "sleep", "1000"])
        .trim()
        .to_string();
    assert_ne!(got, id, "the container took a spare of the replaced binary");
    wait_dead(pid);
    // Its shim runs the file now on disk.
    let out = d.husk_ok(&["--format", "json", "shim", "ls"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["container"], got.as_str());
    let shim_pid = rows[0]["pid"].as_u64().unwrap();
    // The same file: a shim runs from a read-only mount of its binary,
    // whose /proc/PID/exe reads "/" (husk_runtime::sealed_exe).
    use std::os::unix::fs::MetadataExt;
    let running = std::fs::metadata(format!("/proc/{shim_pid}/exe")).unwrap();
    let on_disk = std::fs::metadata(&bin).unwrap();
    assert_eq!(
        (running.dev(), running.ino()),
        (on_disk.dev(), on_disk.ino()),
        "the shim does not run the binary now on disk"
    );
    d.husk_ok(&["rm", "-f", &got]);
    husk_tests::leaks::assert_no_leaks(&got);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn a_create_that_fails_after_taking_the_spare_shuts_it_down() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let (id, pid, _) = wait_spare(&d, None);
    // The user is looked up in the mounted rootfs, after the spare was
    // taken: the create fails there.
    let out = d.husk(&["run", "--rm", "--user", "nosuchuser", IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchuser"));
    wait_dead(pid);
    assert!(!d.bundle(&id).exists());
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    husk_tests::leaks::assert_no_leaks(&id);
}

/// Overlay mount points under `dir` and whether each is `volatile`.
fn overlays_under(dir: &std::path::Path) -> Vec<(String, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.contains(" - overlay "))
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            point
                .starts_with(&dir)
                .then(|| (point.to_string(), l.contains("volatile")))
        })
        .collect()
}

/// No overlay is mounted under `dir`.
fn assert_no_overlays(dir: &std::path::Path) {
    let left = overlays_under(dir);
    assert!(left.is_empty(), "{left:?}");
}

/// Waits for a spare other than `not` whose rootfs is mounted ahead.
fn wait_premounted(d: &Huskd, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = spares(d).into_iter().find(|s| Some(s.0.as_str()) != not) {
            let rootfs = d.state.join("spares").join(&s.0).join("rootfs");
            if overlays_under(&rootfs).len() == 1 {
                return s.0;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no spare with its rootfs mounted came:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_spare_comes_with_the_last_images_rootfs_mounted_and_leaves_none() {
    require_root!();
    let mut d = Huskd::start();
    d.import_busybox();
    // A fresh huskd knows no image to mount ahead.
    let (first, _, _) = wait_spare(&d, None);
    assert!(overlays_under(&d.state.join("spares")).is_empty());
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    assert!(d.container_ids().is_empty());
    // The next spare comes with busybox's rootfs, volatile as for `--rm`.
    let id = wait_premounted(&d, Some(&first));
    let rootfs = d.state.join("spares").join(&id).join("rootfs");
    assert!(
        overlays_under(&rootfs)[0].1,
        "{:?}",
        overlays_under(&rootfs)
    );
    // A `--rm` run takes it: the same container, the image's files, and
    // a writable layer of its own.
    let out = d.husk_ok(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo x > /new && cat /new && ls /bin/busybox",
    ]);
    assert_eq!(out, "x\n/bin/busybox\n");
    let next = wait_premounted(&d, Some(&id));
    // Its rootfs, layers and lease went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.bundle(&id).exists() || d.root_path().join("containers").join(&id).exists() {
        assert!(Instant::now() < deadline, "container {id} not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    husk_tests::leaks::assert_no_leaks(&id);
    // A container that keeps its writable layer does not get the volatile
    // one: it is replaced by a synced mount.
    let kept = d.husk_ok(&["create", IMAGE, "true"]).trim().to_string();
    assert_eq!(kept, next, "the create did not take the spare");
    let mounted = overlays_under(&d.bundle(&kept).join("rootfs"));
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert!(
        !mounted[0].1,
        "a kept container's rootfs is volatile: {mounted:?}"
    );
    d.husk_ok(&["rm", "-f", &kept]);
    husk_tests::leaks::assert_no_leaks(&kept);
    // kill -9 with a spare's rootfs mounted: the restarted huskd unmounts
    // it and drops its lease; stopped, huskd leaves no mount either.
    let premounted = wait_premounted(&d, Some(&next));
    d.kill9();
    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !overlays_under(&d.state).is_empty() || spare_dirs(&d).contains(&premounted) {
        assert!(
            Instant::now() < deadline,
            "left after a restart: {:?}",
            overlays_under(&d.state)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    husk_tests::leaks::assert_no_leaks(&premounted);
    assert!(!d
        .root_path()
        .join("images/leases")
        .join(format!("{premounted}.json"))
        .exists());
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    let last = wait_premounted(&d, None);
    let state = d.state.clone();
    drop(d);
    assert_no_overlays(&state);
    husk_tests::leaks::assert_no_leaks(&last);
}

#[test]
fn removing_the_image_unmounts_the_spares_rootfs_and_prune_frees_it() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    let id = wait_premounted(&d, None);
    d.husk_ok(&["rmi", IMAGE]);
    assert_no_overlays(&d.state);
    let out = d.husk_ok(&["--format", "json", "image", "prune"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !r["snapshots_removed"].as_array().unwrap().is_empty(),
        "a spare's lease kept the layers: {r}"
    );
    assert!(!d
        .root_path()
        .join("images/leases")
        .join(format!("{id}.json"))
        .exists());
    // The spare itself stays, and serves the next container.
    assert!(spares(&d).iter().any(|s| s.0 == id));
}

#[test]
fn huskd_stopped_while_a_spare_mounts_its_rootfs_leaves_no_mount() {
    require_root!();
    // The spare that follows a run starts (and mounts its rootfs) right
    // after the run returns: stopping huskd then races with it.
    for _ in 0..3 {
        let d = Huskd::start();
        d.import_busybox();
        d.husk_ok(&["run", "--rm", IMAGE, "true"]);
        let state = d.state.clone();
        drop(d);
        assert_no_overlays(&state);
    }
}
