//! Must show: `ctr run --rm --runtime io.containerd.husk.v2 IMAGE id
//! /bin/echo hello` prints hello through real containerd 1.6, for both
//! shims, and exit codes propagate.

#[path = "shim_common/mod.rs"]
mod common;

use common::*;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{require_root, unique_id};

fn run_echo(runtime: &str) {
    let env = containerd();
    let id = unique_id("shim-echo");
    let out = env.ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        IMAGE,
        &id,
        "/bin/echo",
        "hello",
    ]);
    assert_eq!(out, "hello\n");
    assert!(env.ctd.ctr_ok(&["container", "ls", "-q"]).trim().is_empty());
    wait_no_shims(&env.ctd);
    assert_no_leaks(&id);
}

#[test]
fn ctr_run_rm_echo_hello_native() {
    require_root!();
    run_echo(NATIVE);
}

#[test]
fn ctr_run_rm_echo_hello_hardened() {
    require_root!();
    run_echo(HARDENED);
}

#[test]
fn exit_codes_propagate() {
    require_root!();
    let env = containerd();
    for (code, runtime) in [(3, NATIVE), (42, HARDENED), (0, NATIVE)] {
        let id = unique_id("shim-exit");
        let out = env.ctd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            &id,
            "/bin/sh",
            "-c",
            &format!("echo out; echo err >&2; exit {code}"),
        ]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
        assert_no_leaks(&id);
    }
    wait_no_shims(&env.ctd);
}

#[test]
fn containerd_debug_logging_reaches_containerd_not_the_address() {
    require_root!();
    // With its log level at debug, containerd starts shims with `-debug`
    // and reads `start`'s stdout and stderr together as the address.
    let env = containerd_with(husk_tests::ContainerdOptions {
        log_level: "debug".into(),
        ..Default::default()
    });
    let id = unique_id("shim-debug");
    let out = env.ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        NATIVE,
        IMAGE,
        &id,
        "/bin/echo",
        "hello",
    ]);
    assert_eq!(out, "hello\n");
    wait_no_shims(&env.ctd);
    // The shim's own log went to containerd's, through the bundle's log FIFO.
    let log = env.ctd.log();
    assert!(log.contains("husk shim serving"), "{log}");
    assert_no_leaks(&id);
}

/// The program header types of the ELF file at `path` (64-bit, little
/// endian: what this machine runs).
fn program_header_types(path: &std::path::Path) -> Vec<u32> {
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &elf[..5],
        b"\x7fELF\x02",
        "{}: not a 64-bit ELF",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * entsize;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// Both shims and both CLIs (`husk`, `husk-runtime`) are static-pie
/// (scripts/rustc-wrapper.sh): no program interpreter (PT_INTERP), but
/// position-independent (PT_DYNAMIC, for relocating itself), so ASLR still
/// applies. A dynamic shim would keep ld.so and libc pages resident in
/// every shim; a dynamic CLI loads and relocates them on every command.
#[test]
fn shim_and_cli_binaries_are_static_pie() {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    let dir = shim_dir();
    for bin in [SHIM_BIN, HARDENED_BIN, "husk", "husk-runtime"] {
        let types = program_header_types(&dir.join(bin));
        assert!(
            !types.contains(&PT_INTERP),
            "{bin} is dynamically linked: is .cargo/config.toml's rustc-workspace-wrapper \
             (scripts/rustc-wrapper.sh) in effect?"
        );
        assert!(
            types.contains(&PT_DYNAMIC),
            "{bin} is not position-independent"
        );
    }
}

/// The shim daemon runs from a read-only detached mount of its binary
/// (husk_runtime::sealed_exe::reexec_sealed, at `start`): what
/// /proc/PID/exe reaches in it, and in every intermediate and init it
/// forks into a container, cannot be written (CVE-2019-5736), and no
/// per-container exec of the binary is needed. Its process name and the
/// binary path in its state stay those of the file on disk.
#[test]
fn shim_daemon_runs_from_a_read_only_handle() {
    require_root!();
    let env = containerd();
    let id = unique_id("shim-sealed");
    run_sleeper(&env.ctd, NATIVE, &id);
    wait_task_status(&env.ctd, &id, "RUNNING");
    let pids = shim_pids(&env.ctd);
    assert_eq!(pids.len(), 1, "one shim for one container: {pids:?}");
    let exe = format!("/proc/{}/exe", pids[0]);
    let read_only = exe_on_read_only_mount(pids[0]);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).unwrap();
    let link = std::fs::read_link(&exe).unwrap();
    kill_delete_and_check(&env.ctd, &id);
    assert!(
        read_only,
        "the shim's binary is writable through {exe} ({})",
        link.display()
    );
    assert_eq!(link, std::path::Path::new("/"), "not a detached mount");
    assert_eq!(comm.trim(), "containerd-shim", "process name");
}
