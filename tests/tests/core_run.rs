//! `husk run` through a real huskd and real shims: output, exit codes,
//! image config defaults, limits, Debian's runc shim.

mod core_common;

use core_common::{Huskd, IMAGE};
use husk_tests::require_root;

#[test]
fn run_prints_hello_with_the_native_shim() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let out = d.husk_ok(&["run", "--rm", IMAGE, "echo", "hello from husk"]);
    assert_eq!(out, "hello from husk\n");
    // --rm: nothing left.
    let ps = d.husk_ok(&["ps", "-a", "--format", "json"]);
    assert_eq!(ps.trim(), "[]", "{ps}");
}

#[test]
fn run_prints_hello_with_debians_runc_shim() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    let d = Huskd::start();
    d.import_busybox();
    let out = d.husk_ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        IMAGE,
        "echo",
        "hello via runc",
    ]);
    assert_eq!(out, "hello via runc\n");
}

#[test]
fn run_exits_with_the_containers_code_and_separates_stderr() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let out = d.husk(&[
        "run",
        "--name",
        &husk_tests::unique_id("exit"),
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        husk_tests::command::format_output(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let ps = d.husk_ok(&["ps", "-a"]);
    assert!(ps.contains("exited (7)"), "{ps}");
}

#[test]
fn sigterm_to_an_attached_run_reaches_the_container() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let mut child = d
        .husk_cmd(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got it; exit 5' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = husk_tests::command::wait_timeout(&mut child, std::time::Duration::from_secs(20))
        .expect("husk run exits");
    assert_eq!(st.code(), Some(5));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got it\n");
}

#[test]
fn run_with_the_hardened_shim_and_a_shim_given_by_path() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let out = d.husk_ok(&[
        "run",
        "--rm",
        "--runtime",
        "hardened",
        IMAGE,
        "echo",
        "hardened",
    ]);
    assert_eq!(out, "hardened\n");
    let path = core_common::bin_dir().join("containerd-shim-husk-v2");
    let out = d.husk_ok(&[
        "run",
        "--rm",
        "--runtime",
        path.to_str().unwrap(),
        IMAGE,
        "echo",
        "by path",
    ]);
    assert_eq!(out, "by path\n");
}

/// `run --rm` answers once the container's exit is known and its output
/// drained: its name is free at once, and its shim, cgroups, rootfs mount
/// and directories go right after (huskd removes them in the background).
#[test]
fn run_rm_frees_its_name_at_once_and_leaves_nothing_behind() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let name = husk_tests::unique_id("rmname");
    // The hostname defaults to the id's first 12 characters.
    let ids: Vec<String> = (0..3)
        .map(|_| {
            d.husk_ok(&["run", "--rm", "--name", &name, IMAGE, "hostname"])
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    for id in &ids {
        assert_eq!(id.len(), 12, "{ids:?}");
        husk_tests::leaks::assert_no_leaks(id);
    }
    let named = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| ids.iter().any(|id| n.contains(id.as_str())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let left: Vec<String> = [d.state.join("bundles"), d.root.join("containers")]
            .iter()
            .flat_map(|dir| named(dir))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The container's program starts with no signal ignored (ignored signals
/// survive execve: the runtime's Rust ignores SIGPIPE), as under runc: a
/// pipeline's writer dies quietly of SIGPIPE.
#[test]
fn the_containers_program_starts_with_no_signal_ignored() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let out = d.husk(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "grep SigIgn /proc/self/status; yes | head -1",
    ]);
    let text = husk_tests::command::format_output(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SigIgn:\t0000000000000000\ny\n",
        "{text}"
    );
    assert!(out.stderr.is_empty(), "{text}");
}
