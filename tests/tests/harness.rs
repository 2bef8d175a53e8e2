//! Proves the test harness itself against real components: busybox-static,
//! runc and containerd 1.6 (with its stock runc shim). If these fail, husk's
//! own integration tests cannot be trusted either.
//!
//! Only a non-root run skips (with a `SKIP:` line); a missing runc, ctr or
//! containerd fails and says to run scripts/install-deps.sh.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use husk_tests::leaks::{assert_no_leaks, processes_matching, Leaks};
use husk_tests::{busybox, command, require_command, require_root};
use husk_tests::{unique_id, Bundle, Containerd, HuskRuntime, ImageBuilder};

#[test]
fn busybox_rootfs_has_applets_and_users() {
    let rootfs = busybox::cached_rootfs();
    let bb = rootfs.join("bin/busybox");
    assert!(bb.is_file(), "{} missing", bb.display());
    for applet in ["sh", "echo", "true", "sleep", "id", "hostname", "cat"] {
        let link = rootfs.join("bin").join(applet);
        assert_eq!(
            fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
            Path::new("busybox")
        );
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    for user in ["root:x:0:0:", "husk:x:1000:1000:", "nobody:x:65534:65534:"] {
        assert!(
            passwd.contains(user),
            "{user} missing from passwd:\n{passwd}"
        );
    }
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    for g in ["root:x:0:", "husk:x:1000:", "nobody:x:65534:"] {
        assert!(group.contains(g), "{g} missing from group:\n{group}");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "run", "var"] {
        assert!(rootfs.join(d).is_dir(), "/{d} missing");
    }
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // Static: it runs on the host as well as in an empty rootfs.
    let out = command::output_ok(Command::new(&bb).args(["echo", "static"]));
    assert_eq!(out.stdout, b"static\n");
}

#[test]
fn bundle_copies_are_independent() {
    let a = Bundle::busybox(&["/bin/true"]);
    let b = Bundle::busybox(&["/bin/true"]);
    fs::write(a.rootfs().join("tmp/only-in-a"), "x").unwrap();
    assert!(!b.rootfs().join("tmp/only-in-a").exists());
    assert!(!busybox::cached_rootfs().join("tmp/only-in-a").exists());
    let path = a.path().to_path_buf();
    drop(a);
    assert!(
        !path.exists(),
        "bundle dir {} survived drop",
        path.display()
    );
}

#[test]
fn runc_runs_busybox_bundle() {
    require_root!();
    require_command("runc");
    let bundle = Bundle::busybox(&["/bin/echo", "hello"]);
    let rt = HuskRuntime::runc();
    let id = unique_id("harness-runc");
    let out = rt.run_ok(&["run", "--bundle", &bundle.path().to_string_lossy(), &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(rt.container_ids().is_empty(), "runc run left state behind");
    assert_no_leaks(&id);
}

#[test]
fn runc_sees_spec_edits_users_and_hostname() {
    require_root!();
    require_command("runc");
    let mut bundle = Bundle::busybox(&["/bin/true"]);
    bundle.set_args(&["/bin/sh", "-c", "hostname; id -un; id -gn; echo $HOME"]);
    let user = &mut bundle.process_mut().user_mut();
    user.set_uid(1000);
    user.set_gid(1000);
    bundle.save();
    let rt = HuskRuntime::runc();
    let id = unique_id("harness-user");
    let out = rt.run_ok(&["run", "--bundle", &bundle.path().to_string_lossy(), &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "husk\nhusk\nhusk\n/home/husk\n"
    );
    assert_no_leaks(&id);
}

#[test]
fn runtime_drop_deletes_a_running_container() {
    require_root!();
    require_command("runc");
    let bundle = Bundle::busybox(&["/bin/sleep", "1000"]);
    let id = unique_id("harness-drop");
    {
        let rt = HuskRuntime::runc();
        // Detached: runc returns while the container keeps the pipes open.
        rt.run_ok(&[
            "run",
            "-d",
            "--bundle",
            &bundle.path().to_string_lossy(),
            &id,
        ]);
        assert_eq!(rt.state(&id)["status"], "running");
        assert_eq!(rt.container_ids(), vec![id.clone()]);
        // The leak check would see this container if it leaked.
        let live = Leaks::find(&id);
        assert!(!live.cgroups.is_empty(), "no cgroup named {id} found");
    }
    assert_no_leaks(&id);
}

#[test]
fn containerd_runs_imported_layout_with_runc_shim() {
    require_root!();
    require_command("runc");
    require_command("containerd-shim-runc-v2");
    let tmp = tempfile::Builder::new()
        .prefix("husk-harness-")
        .tempdir()
        .unwrap();
    let tar = tmp.path().join("busybox.tar");
    let layout = ImageBuilder::busybox().write_tar(&tar);
    let ctd = Containerd::start();
    let address = ctd.address().to_string_lossy().into_owned();
    ctd.import_image(&tar, "husk.test/busybox");
    let images = ctd.ctr_ok(&["image", "ls"]);
    assert!(
        images.contains("husk.test/busybox:latest") && images.contains(&layout.manifest_digest),
        "imported image not listed as husk.test/busybox:latest @ {}:\n{images}",
        layout.manifest_digest
    );
    let id = unique_id("harness-ctr");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "husk.test/busybox:latest",
        &id,
        "/bin/echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");
    // The image's own Cmd and Env reach the container.
    let id2 = unique_id("harness-cmd");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "husk.test/busybox:latest",
        &id2,
        "/bin/sh",
        "-c",
        "echo $PATH",
    ]);
    assert_eq!(
        out,
        format!("{}\n", &husk_tests::image::DEFAULT_PATH_ENV[5..])
    );
    assert_no_leaks(&id);
    assert_no_leaks(&id2);
    drop(ctd);
    assert!(processes_matching(&address).is_empty());
}

#[test]
fn containerd_kill9_restart_and_drop_cleanup() {
    require_root!();
    require_command("runc");
    require_command("containerd-shim-runc-v2");
    let tmp = tempfile::Builder::new()
        .prefix("husk-harness-")
        .tempdir()
        .unwrap();
    let tar = tmp.path().join("busybox.tar");
    ImageBuilder::busybox().write_tar(&tar);
    let mut ctd = Containerd::start();
    let address = ctd.address().to_string_lossy().into_owned();
    ctd.import_image(&tar, "husk.test/busybox");
    let id = unique_id("harness-k9");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "husk.test/busybox:latest",
        &id,
        "/bin/sleep",
        "1000",
    ]);

    ctd.kill9();
    assert!(!ctd.is_running());
    assert!(
        !Leaks::find(&id).cgroups.is_empty(),
        "no cgroup named {id} found for the running task"
    );
    let shims = processes_matching(&address);
    assert!(
        !shims.is_empty(),
        "the shim should outlive containerd's kill -9"
    );

    ctd.restart();
    assert!(ctd.is_running());
    let tasks = ctd.ctr_ok(&["tasks", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.contains(&id) && l.contains("RUNNING")),
        "task {id} not running after restart:\n{tasks}"
    );

    // Kill containerd again and let Drop clean up: it must restart
    // containerd, delete the task and leave nothing behind.
    ctd.kill9();
    drop(ctd);
    assert_no_leaks(&id);
    assert!(processes_matching(&address).is_empty());
}
