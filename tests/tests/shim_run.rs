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

/// Both shims are static-pie (scripts/rustc-wrapper.sh): no program
/// interpreter (PT_INTERP), but position-independent (PT_DYNAMIC, for
/// relocating itself), so ASLR still applies. A dynamic shim would keep
/// ld.so and libc pages resident in every shim.
#[test]
fn shim_binaries_are_static_pie() {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    let dir = shim_dir();
    for bin in [SHIM_BIN, HARDENED_BIN] {
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
