//! stdin (`-i`) and terminals (`-t`) for run and exec.

mod core_common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use core_common::{Huskd, IMAGE};
use husk_tests::require_root;

fn with_stdin(d: &Huskd, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut cmd = d.husk_cmd(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    husk_tests::command::wait_timeout(&mut child, Duration::from_secs(30)).expect("husk exits");
    child.wait_with_output().unwrap()
}

fn stdin_reaches(runtime: &str) {
    let d = Huskd::start();
    d.import_busybox();
    let out = with_stdin(
        &d,
        &[
            "run",
            "--rm",
            "-i",
            "--runtime",
            runtime,
            IMAGE,
            "sh",
            "-c",
            "tr a-z A-Z; exit 9",
        ],
        "héllo\nworld\n".as_bytes(),
    );
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        husk_tests::command::format_output(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HéLLO\nWORLD\n");
    let id = d
        .husk_ok(&["run", "-d", "--runtime", runtime, IMAGE, "sleep", "100"])
        .trim()
        .to_string();
    let out = with_stdin(&d, &["exec", "-i", &id, "wc", "-l"], b"1\n2\n3\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        husk_tests::command::format_output(&out),
        d.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    d.husk_ok(&["rm", "-f", &id]);
}

#[test]
fn run_i_and_exec_i_feed_stdin_with_the_native_shim() {
    require_root!();
    stdin_reaches("native");
}

#[test]
fn run_i_and_exec_i_feed_stdin_with_debians_runc_shim() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    stdin_reaches("runc");
}

/// Runs `husk ARGS` on a pty made by `script`, with `input` typed in.
fn on_a_pty(d: &Huskd, args: &[&str], input: &str) -> (Option<i32>, String) {
    let script = husk_tests::host::require_command("script");
    let mut line = format!(
        "{} --socket {}",
        core_common::bin_dir().join("husk").display(),
        d.socket.display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = std::process::Command::new(script)
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(input.as_bytes()).unwrap();
    husk_tests::command::wait_timeout(&mut child, Duration::from_secs(30)).expect("husk exits");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn run_it_gives_the_container_a_terminal() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let (code, out) = on_a_pty(
        &d,
        &["run", "--rm", "-it", IMAGE, "sh"],
        "tty; stty size; exit 3\n",
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("/dev/pts/0"), "{out:?}");
}

#[test]
fn exec_it_gives_the_process_a_terminal() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sleep", "100"])
        .trim()
        .to_string();
    let (code, out) = on_a_pty(
        &d,
        &["exec", "-it", &id, "sh"],
        "test -t 0 && echo is-a-tty; exit 4\n",
    );
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    d.husk_ok(&["rm", "-f", &id]);
}

#[test]
fn run_it_gives_the_container_a_terminal_with_debians_runc_shim() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    let d = Huskd::start();
    d.import_busybox();
    let (code, out) = on_a_pty(
        &d,
        &["run", "--rm", "-it", "--runtime", "runc", IMAGE, "sh"],
        "tty; exit 3\n",
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("/dev/pts/0"), "{out:?}");
}
