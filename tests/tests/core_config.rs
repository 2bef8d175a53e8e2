//! What a container gets: the image config's defaults (Entrypoint, Cmd,
//! Env, WorkingDir) and the flags over them, volumes that outlive
//! containers, memory and pids limits.

mod core_common;

use core_common::{Huskd, IMAGE};
use husk_tests::{require_root, ImageBuilder};

#[test]
fn env_workdir_entrypoint_and_user_come_from_the_image_and_flags() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let tar = d.tmp.path().join("cfg.tar");
    ImageBuilder::busybox()
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo \"$GREETING from $(pwd) as $(id -u)\""])
        .env(&["PATH=/bin:/usr/bin", "GREETING=hello"])
        .working_dir("/etc")
        .write_tar(&tar);
    d.husk_ok(&[
        "image",
        "import",
        "--name",
        "husk.test/cfg:1",
        tar.to_str().unwrap(),
    ]);
    assert_eq!(
        d.husk_ok(&["run", "--rm", "husk.test/cfg:1"]),
        "hello from /etc as 0\n"
    );
    assert_eq!(
        d.husk_ok(&[
            "run",
            "--rm",
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp",
            "--user",
            "1000:1000",
            "husk.test/cfg:1"
        ]),
        "hi from /tmp as 1000\n"
    );
    // CMD replaced, entrypoint kept.
    assert_eq!(
        d.husk_ok(&["run", "--rm", "husk.test/cfg:1", "echo $0-x"]),
        "/bin/sh-x\n"
    );
    assert_eq!(
        d.husk_ok(&["run", "--rm", "--hostname", "box1", IMAGE, "hostname"]),
        "box1\n"
    );
}

#[test]
fn a_named_volume_outlives_its_containers_and_is_protected_while_used() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let vol = husk_tests::unique_id("vol");
    let spec = format!("{vol}:/data");
    d.husk_ok(&[
        "run",
        "--rm",
        "-v",
        &spec,
        IMAGE,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    let ls = d.husk_ok(&["volume", "ls"]);
    assert!(ls.contains(&vol), "{ls}");
    assert_eq!(
        d.husk_ok(&["run", "--rm", "-v", &spec, IMAGE, "cat", "/data/f"]),
        "kept\n"
    );
    // In use: rm refused.
    let id = d
        .husk_ok(&["run", "-d", "-v", &spec, IMAGE, "sleep", "100"])
        .trim()
        .to_string();
    let out = d.husk(&["volume", "rm", &vol]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    d.husk_ok(&["rm", "-f", &id]);
    d.husk_ok(&["volume", "rm", &vol]);
    assert!(!d.husk_ok(&["volume", "ls"]).contains(&vol));
}

#[test]
fn a_bind_mount_and_read_only() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let host = d.tmp.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), "from host\n").unwrap();
    let rw = format!("{}:/mnt", host.display());
    d.husk_ok(&[
        "run",
        "--rm",
        "-v",
        &rw,
        IMAGE,
        "sh",
        "-c",
        "cat /mnt/in > /mnt/out",
    ]);
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from host\n"
    );
    let ro = format!("{}:/mnt:ro", host.display());
    let out = d.husk(&["run", "--rm", "-v", &ro, IMAGE, "touch", "/mnt/x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!host.join("x").exists());
    let out = d.husk(&["run", "--rm", "--read-only", IMAGE, "touch", "/x"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn memory_and_pids_limits_apply() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&[
            "run",
            "-d",
            "--memory",
            "32m",
            "--pids-limit",
            "10",
            IMAGE,
            "sleep",
            "100",
        ])
        .trim()
        .to_string();
    d.wait_status(&id, "running");
    let dirs = husk_tests::leaks::cgroup_dirs_matching(&id);
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("no {file} in {dirs:?}"))
    };
    let mem = dirs
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .unwrap();
    assert_eq!(mem.trim(), (32u64 << 20).to_string());
    assert_eq!(read("pids.max").trim(), "10");
    d.husk_ok(&["rm", "-f", &id]);
    // The pids limit stops a fork bomb.
    let out = d.husk(&[
        "run",
        "--rm",
        "--pids-limit",
        "8",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "{err}"
    );
}
