//! Device control on cgroup v2: an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE)
//! attached to the container's cgroup, compiled from the OCI device rules.
//!
//! cgroup v2 has no devices.allow/deny files. For every open or mknod of a
//! device node the kernel runs the attached programs with (type, major,
//! minor, access) and denies unless they return 1. Rules are evaluated as
//! on v1: the last rule that matches decides, and nothing matching means
//! deny.

use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;
use crate::sys;

/// One eBPF instruction, as the kernel lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used here (see linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57; // dst &= imm
const ALU64_RSH_K: u8 = 0x77; // dst >>= imm
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const ALU64_MOV_X: u8 = 0xbf; // dst = src
const JMP_JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JMP_EXIT: u8 = 0x95;

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

/// access_type = (access << 16) | type
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

// Registers: r1 = ctx, r0 = verdict, r2 = type, r3 = access, r4 = major,
// r5 = minor, r6 = scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

fn access_bits(access: Option<&str>) -> u32 {
    let a = access.unwrap_or("rwm");
    let mut bits = 0;
    if a.contains('r') {
        bits |= ACC_READ;
    }
    if a.contains('w') {
        bits |= ACC_WRITE;
    }
    if a.contains('m') {
        bits |= ACC_MKNOD;
    }
    bits
}

/// Compiles the rules into a program. Later rules are checked first, so the
/// last matching rule wins, as with v1's devices.allow/deny sequence.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_MEM_W, R2, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU64_MOV_X, R3, R2, 0, 0),
        insn(ALU64_AND_K, R2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, R5, R1, CTX_MINOR, 0),
    ];
    for rule in rules.iter().rev() {
        // Conditions, each jumping past this rule's block when unmet; the
        // offsets are patched once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let typ = match rule.typ() {
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            // 'p' (fifo) never reaches the device cgroup; 'a' matches all.
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => None,
        };
        if let Some(t) = typ {
            block.push(insn(JMP_JNE_K, R2, 0, 0, t as i32));
        }
        let allowed = access_bits(rule.access().as_deref());
        if allowed != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The rule matches only if every requested access is in it.
            block.push(insn(ALU64_MOV_X, R6, R3, 0, 0));
            block.push(insn(ALU64_AND_K, R6, 0, 0, !(allowed as i32)));
            block.push(insn(JMP_JNE_K, R6, 0, 0, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, R4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, R5, 0, 0, minor as i32));
        }
        // A rule without conditions matches everything: what follows it
        // could never run, and the verifier refuses unreachable code.
        let unconditional = block.is_empty();
        block.push(insn(ALU64_MOV_K, R0, 0, 0, rule.allow() as i32));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        if unconditional {
            prog.extend(block);
            return prog;
        }
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                // Jump to the first instruction after the block.
                ins.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

impl Insn {
    /// The kernel's 8-byte encoding.
    pub fn encode(self) -> u64 {
        (self.code as u64)
            | (self.regs as u64) << 8
            | ((self.off as u16) as u64) << 16
            | ((self.imm as u32) as u64) << 32
    }
}

/// Compiles `rules` and makes the program the only device filter on the
/// cgroup at `dir`: the new one is attached before the old ones are
/// detached, so the cgroup is never without a filter.
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let fail = |what: &str, e: std::io::Error| CgroupError::DeviceFilter {
        path: dir.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let code: Vec<u64> = compile(rules).into_iter().map(Insn::encode).collect();
    let prog =
        sys::bpf_load_cgroup_device(&code).map_err(|e| fail("load the eBPF device program", e))?;
    let cgroup = sys::open_dir(dir).map_err(|e| fail("open the cgroup", e))?;
    let old = sys::bpf_cgroup_device_programs(cgroup.as_fd())
        .map_err(|e| fail("list attached device programs", e))?;
    sys::bpf_attach_cgroup_device(cgroup.as_fd(), prog.as_fd())
        .map_err(|e| fail("attach the eBPF device program", e))?;
    for id in old {
        sys::bpf_detach_cgroup_device(cgroup.as_fd(), id)
            .map_err(|e| fail("detach the previous device program", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way the kernel would, for the opcodes `compile`
    /// emits, so the rules' semantics are tested without root.
    fn run(prog: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, R1 as usize);
                    r[dst] = ctx[(i.off / 4) as usize] as u64;
                }
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: Option<LinuxDeviceType>,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(typ);
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    }

    #[test]
    fn deny_all_then_allow_specific_devices() {
        use LinuxDeviceType::C;
        let prog = compile(&[
            rule(false, None, None, None, "rwm"),
            rule(true, Some(C), Some(1), Some(3), "rwm"),
            rule(true, Some(C), Some(136), None, "rw"),
            rule(true, Some(C), None, None, "m"),
        ]);
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&prog, DEV_CHAR, rw, 1, 3), 1, "/dev/null");
        assert_eq!(
            run(&prog, DEV_CHAR, rw, 1, 5),
            0,
            "/dev/zero is not allowed"
        );
        assert_eq!(run(&prog, DEV_CHAR, rw, 136, 7), 1, "any pts");
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_MKNOD, 136, 7),
            1,
            "mknod of any char device"
        );
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_MKNOD | ACC_READ, 8, 0),
            0,
            "mknod+read needs both"
        );
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ, 8, 0), 0, "no block devices");
        assert_eq!(
            run(&prog, DEV_BLOCK, ACC_MKNOD, 8, 0),
            0,
            "the m rule is char only"
        );
    }

    #[test]
    fn the_last_matching_rule_wins() {
        use LinuxDeviceType::C;
        let prog = compile(&[
            rule(true, None, None, None, "rwm"),
            rule(false, Some(C), Some(1), Some(5), "rwm"),
        ]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 5), 0);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_WRITE, 8, 0), 1);
    }

    #[test]
    fn nothing_follows_an_unconditional_rule() {
        let prog = compile(&[rule(false, None, None, None, "rwm")]);
        // Prelude, then "r0 = 0; exit" once: no unreachable default.
        assert_eq!(prog.len(), 8);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn no_rules_deny_everything() {
        let prog = compile(&[]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn read_only_rules_do_not_grant_writes() {
        use LinuxDeviceType::C;
        let prog = compile(&[rule(true, Some(C), Some(1), Some(9), "r")]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 9), 1);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 9), 0);
    }
}
