//! OCI seccomp (`linux.seccomp`): a syscall filter the container's
//! process gets right before it execs, with runc's semantics.
//!
//! Three steps, split so that the container never runs libseccomp:
//!
//! - [`Plan::from_spec`] is pure: it checks the profile and translates it
//!   into actions, architectures, flags and rules (errors name the JSON
//!   field). [`validate`] adds what libseccomp and the kernel support
//!   (architectures, flags); `spec::validate` runs it, microseconds.
//! - [`compile`] hands the plan to libseccomp, which resolves syscall names
//!   per architecture and generates the BPF program: milliseconds for
//!   Docker's profile, so `create` runs it in a thread while it waits for
//!   the cgroup lock. The [`Program`] travels to the init in its config.
//! - [`Program::load`], in the container init (and every `exec`), is one
//!   seccomp(2) call: before the credentials change without
//!   `noNewPrivileges`, right before `execve` with it (see `init.rs`).
//!
//! As in runc: the default errno is EPERM; a syscall name libseccomp does
//! not know is skipped (profiles list syscalls newer than the kernel); a
//! rule whose action is the default action is dropped; where two rules
//! overlap, the first wins; a rule comparing one argument twice becomes one
//! rule per comparison (libseccomp cannot AND two comparisons of one
//! argument); more than 32 rules get libseccomp's binary-tree layout.
//! Not implemented: `SCMP_ACT_NOTIFY` (refused), and runc's patching of
//! the BPF to return ENOSYS rather than the default errno for syscalls
//! newer than the profile.
//!
//! Stacking: the annotation [`STACKED_ANNOTATION`] holds a JSON array of
//! further profiles, loaded after `linux.seccomp` as separate filters
//! ([`profiles`], [`compile_all`]). The kernel runs every filter a process
//! has and the most restrictive action wins, so a stacked profile can only
//! take permissions away. The hardened profile uses it to keep its own
//! filter in `linux.seccomp` and the workload's on top.

use std::collections::HashSet;
use std::io::{Read, Seek};

use libseccomp::error::SeccompError;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, Spec,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The annotation holding further profiles (a JSON array of
/// `linux.seccomp` objects), each loaded as its own filter after
/// `linux.seccomp`.
pub const STACKED_ANNOTATION: &str = "io.husk.seccomp.stacked";

/// The profiles of `spec` in load order: `linux.seccomp`, then those of
/// [`STACKED_ANNOTATION`].
pub fn profiles(spec: &Spec) -> Result<Vec<LinuxSeccomp>> {
    let mut all: Vec<LinuxSeccomp> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone())
        .into_iter()
        .collect();
    all.extend(stacked_profiles(spec)?);
    Ok(all)
}

/// The profiles of [`STACKED_ANNOTATION`] alone (none without it).
pub fn stacked_profiles(spec: &Spec) -> Result<Vec<LinuxSeccomp>> {
    let Some(text) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(STACKED_ANNOTATION))
    else {
        return Ok(Vec::new());
    };
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        invalid(format!(
            "annotation {STACKED_ANNOTATION} must be a JSON array of linux.seccomp profiles: at {}: {}",
            e.path(),
            e.inner()
        ))
    })
}

/// Compiles `profiles` into one [`Program`] that loads them in order, each
/// as its own filter; `None` for no profile.
pub fn compile_all(profiles: &[LinuxSeccomp]) -> Result<Option<Program>> {
    let mut compiled = profiles.iter().map(compile);
    let Some(first) = compiled.next() else {
        return Ok(None);
    };
    let mut head = first?;
    for next in compiled {
        head.stacked.push(next?);
    }
    Ok(Some(head))
}

/// What a refused `SCMP_ACT_NOTIFY` says.
pub const NOTIFY_UNSUPPORTED: &str = "seccomp notify needs listenerPath support, not implemented";

/// A syscall has six arguments, 0 to 5.
pub const MAX_ARGS: usize = 6;

/// Above this many rules, ask libseccomp for a binary tree instead of a
/// linear list (runc's threshold: libseccomp <= 2.5.4 misbehaves with an
/// optimized empty filter).
const BINARY_TREE_MIN_RULES: usize = 32;

/// What the kernel does on a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `SCMP_ACT_KILL` and `SCMP_ACT_KILL_THREAD`.
    KillThread,
    KillProcess,
    /// SIGSYS.
    Trap,
    /// The syscall fails with this errno without running.
    Errno(u16),
    /// A ptrace tracer is notified with this value.
    Trace(u16),
    /// Allowed and logged.
    Log,
    Allow,
}

impl Action {
    fn to_scmp(self) -> ScmpAction {
        match self {
            Action::KillThread => ScmpAction::KillThread,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Trap => ScmpAction::Trap,
            Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
            Action::Trace(v) => ScmpAction::Trace(v),
            Action::Log => ScmpAction::Log,
            Action::Allow => ScmpAction::Allow,
        }
    }
}

/// How an argument is compared with `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `arg & mask == value`.
    MaskedEq {
        mask: u64,
    },
}

/// One argument comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub index: u32,
    pub op: Op,
    pub value: u64,
}

impl Condition {
    fn to_scmp(self) -> ScmpArgCompare {
        let op = match self.op {
            Op::Ne => ScmpCompareOp::NotEqual,
            Op::Lt => ScmpCompareOp::Less,
            Op::Le => ScmpCompareOp::LessOrEqual,
            Op::Eq => ScmpCompareOp::Equal,
            Op::Ge => ScmpCompareOp::GreaterEqual,
            Op::Gt => ScmpCompareOp::Greater,
            Op::MaskedEq { mask } => ScmpCompareOp::MaskedEqual(mask),
        };
        ScmpArgCompare::new(self.index, op, self.value)
    }
}

/// `action` for the syscalls `names` when all `conditions` hold (always,
/// when there are none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Index in `linux.seccomp.syscalls`, for error messages.
    pub source: usize,
    pub names: Vec<String>,
    pub action: Action,
    pub conditions: Vec<Condition>,
}

/// `linux.seccomp.flags` that change how the filter is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub tsync: bool,
    pub log: bool,
    pub spec_allow: bool,
}

impl Flags {
    /// seccomp(2)'s `SECCOMP_FILTER_FLAG_*` bits.
    pub fn bits(self) -> u32 {
        let mut bits = 0;
        if self.tsync {
            bits |= libc::SECCOMP_FILTER_FLAG_TSYNC;
        }
        if self.log {
            bits |= libc::SECCOMP_FILTER_FLAG_LOG;
        }
        if self.spec_allow {
            bits |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
        }
        bits as u32
    }
}

/// A checked profile, ready for libseccomp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub default_action: Action,
    /// Besides the native one, which a filter always has.
    pub architectures: Vec<Arch>,
    pub flags: Flags,
    pub rules: Vec<Rule>,
}

/// A filter built by libseccomp, before BPF generation.
pub struct Filter {
    ctx: ScmpFilterContext,
    flags: Flags,
    /// Syscall names of the profile that libseccomp does not know.
    pub skipped: Vec<String>,
    /// Rules handed to libseccomp (one per known name and condition set).
    pub rules: usize,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("flags", &self.flags)
            .field("skipped", &self.skipped)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// Checks a profile: the plan, and that this libseccomp and kernel support
/// its architectures and flags. Cheap (no rules are compiled), so `create`
/// runs it first; [`compile`] then fails only on libseccomp's own refusals.
pub fn validate(profile: &LinuxSeccomp) -> Result<()> {
    Plan::from_spec(profile)?.context().map(drop)
}

/// How many compiled profiles a process keeps (a shim compiles the same
/// few profiles, Docker's or the pod's, over and over).
const CACHE_SIZE: usize = 8;

/// Compiles a profile to the BPF program the init loads. The last few
/// programs are kept, so a long-lived caller (the shim) pays libseccomp
/// once per distinct profile.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program> {
    type Cache = Vec<(String, Program)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
    let key = serde_json::to_string(profile).unwrap_or_default();
    let cache = || {
        CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some((_, program)) = cache().iter().find(|(k, _)| *k == key) {
        return Ok(program.clone());
    }
    let program = compile_uncached(profile)?;
    let mut cache = cache();
    if cache.len() >= CACHE_SIZE {
        cache.remove(0);
    }
    cache.push((key, program.clone()));
    Ok(program)
}

fn compile_uncached(profile: &LinuxSeccomp) -> Result<Program> {
    let filter = Plan::from_spec(profile)?.build()?;
    if !filter.skipped.is_empty() {
        tracing::debug!(
            "seccomp: {} syscall name(s) unknown to libseccomp {} are ignored: {}",
            filter.skipped.len(),
            library_version(),
            filter.skipped.join(", ")
        );
    }
    filter.program()
}

/// The profile's JSON spelling of an enum value (`SCMP_ACT_ERRNO`).
fn json_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn invalid(msg: String) -> Error {
    Error::invalid_spec(msg)
}

/// Translates one action; `at` is the JSON path of the action field and
/// `errno_at` that of its errno field.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    at: &str,
    errno_at: &str,
) -> Result<Action> {
    let data = |what: &str| -> Result<u16> {
        match errno_ret {
            None => Ok(libc::EPERM as u16),
            Some(v) => u16::try_from(v).map_err(|_| {
                invalid(format!(
                    "{errno_at} {v} is out of range: the kernel keeps 16 bits of {what} (at most 65535)"
                ))
            }),
        }
    };
    let a = match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActErrno => return Ok(Action::Errno(data("an errno")?)),
        LinuxSeccompAction::ScmpActTrace => return Ok(Action::Trace(data("a trace value")?)),
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(format!(
                "{at} is SCMP_ACT_NOTIFY: {NOTIFY_UNSUPPORTED}; use another action such as SCMP_ACT_ERRNO"
            )))
        }
    };
    // The runtime spec: "When the action doesn't support an errno, the
    // runtime MUST print an error and fail."
    if let Some(v) = errno_ret {
        return Err(invalid(format!(
            "{errno_at} is {v} but {at} {} returns no errno; remove it, or use SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
            json_name(&act)
        )));
    }
    Ok(a)
}

fn condition(arg: &LinuxSeccompArg, at: &str) -> Result<Condition> {
    let index = arg.index();
    if index >= MAX_ARGS {
        return Err(invalid(format!(
            "{at}.index is {index}: a syscall has {MAX_ARGS} arguments, numbered 0 to {}",
            MAX_ARGS - 1
        )));
    }
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (Op::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (Op::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (Op::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (Op::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (Op::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (Op::Gt, arg.value()),
        // As runc and libseccomp: `value` is the mask, `valueTwo` the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            Op::MaskedEq { mask: arg.value() },
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(Condition {
        index: index as u32,
        op,
        value,
    })
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

type FlagSetter = fn(&mut ScmpFilterContext, bool) -> std::result::Result<(), SeccompError>;

impl Plan {
    /// Checks and translates a profile. Pure: no libseccomp, no kernel.
    pub fn from_spec(profile: &LinuxSeccomp) -> Result<Plan> {
        const AT: &str = "linux.seccomp";
        let default_action = action(
            profile.default_action(),
            profile.default_errno_ret(),
            &format!("{AT}.defaultAction"),
            &format!("{AT}.defaultErrnoRet"),
        )?;
        let mut architectures = Vec::new();
        for a in profile.architectures().iter().flatten() {
            if !architectures.contains(a) {
                architectures.push(*a);
            }
        }
        let mut flags = Flags::default();
        for f in profile.flags().iter().flatten() {
            match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => flags.tsync = true,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags.log = true,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => flags.spec_allow = true,
                // Only changes how a notifying filter waits; without
                // SCMP_ACT_NOTIFY (refused below) there is nothing to change.
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {}
            }
        }
        let mut rules = Vec::new();
        for (i, call) in profile.syscalls().iter().flatten().enumerate() {
            let at = format!("{AT}.syscalls[{i}]");
            if call.names().is_empty() {
                return Err(invalid(format!(
                    "{at}.names is empty: list the syscalls the rule is for"
                )));
            }
            if let Some(bad) = call
                .names()
                .iter()
                .find(|n| n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()))
            {
                return Err(invalid(format!("{at}.names has an invalid name {bad:?}")));
            }
            let act = action(
                call.action(),
                call.errno_ret(),
                &format!("{at}.action"),
                &format!("{at}.errnoRet"),
            )?;
            let conditions = call
                .args()
                .iter()
                .flatten()
                .enumerate()
                .map(|(j, arg)| condition(arg, &format!("{at}.args[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            // As runc: redundant with the default, and libseccomp refuses it.
            if act == default_action {
                continue;
            }
            let mut seen = HashSet::new();
            let repeated = conditions.iter().any(|c| !seen.insert(c.index));
            let rule = |conditions| Rule {
                source: i,
                names: call.names().clone(),
                action: act,
                conditions,
            };
            if repeated {
                // libseccomp cannot AND two comparisons of one argument;
                // runc then adds one rule per comparison (so they OR).
                rules.extend(conditions.iter().map(|c| rule(vec![*c])));
            } else {
                rules.push(rule(conditions));
            }
        }
        Ok(Plan {
            default_action,
            architectures,
            flags,
            rules,
        })
    }

    /// A libseccomp filter with the default action, architectures and flags
    /// of the plan, and no rules yet.
    fn context(&self) -> Result<ScmpFilterContext> {
        let mut ctx = ScmpFilterContext::new(self.default_action.to_scmp()).map_err(|e| {
            invalid(format!(
                "linux.seccomp: libseccomp {} cannot create a filter: {e}",
                library_version()
            ))
        })?;
        for (i, a) in self.architectures.iter().enumerate() {
            ctx.add_arch(arch(*a)).map_err(|e| {
                invalid(format!(
                    "linux.seccomp.architectures[{i}]: libseccomp {} cannot filter {} on this host ({e}); remove it from the profile",
                    library_version(),
                    json_name(a)
                ))
            })?;
        }
        // Set for the API-level check only: Program::load passes the flags.
        let flags: [(bool, &str, FlagSetter); 3] = [
            (self.flags.tsync, "SECCOMP_FILTER_FLAG_TSYNC", |c, on| {
                c.set_ctl_tsync(on).map(drop)
            }),
            (self.flags.log, "SECCOMP_FILTER_FLAG_LOG", |c, on| {
                c.set_ctl_log(on).map(drop)
            }),
            (
                self.flags.spec_allow,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                |c, on| c.set_ctl_ssb(on).map(drop),
            ),
        ];
        for (on, name, set) in flags {
            if on {
                set(&mut ctx, true).map_err(|e| {
                    invalid(format!(
                        "linux.seccomp.flags: {name} is not supported by libseccomp {} on this kernel ({e}); remove it from the profile",
                        library_version()
                    ))
                })?;
            }
        }
        Ok(ctx)
    }

    /// Builds the filter with libseccomp (no privilege needed). Names it
    /// does not know are skipped and listed in [`Filter::skipped`].
    pub fn build(&self) -> Result<Filter> {
        let mut ctx = self.context()?;
        if self.rules.len() > BINARY_TREE_MIN_RULES {
            if let Err(e) = ctx.set_ctl_optimize(2) {
                tracing::debug!("seccomp: binary tree layout unavailable ({e})");
            }
        }
        let mut skipped = Vec::new();
        let mut added = 0;
        for rule in &self.rules {
            let conditions: Vec<ScmpArgCompare> =
                rule.conditions.iter().map(|c| c.to_scmp()).collect();
            for name in &rule.names {
                let Ok(syscall) = ScmpSyscall::from_name(name) else {
                    if !skipped.contains(name) {
                        skipped.push(name.clone());
                    }
                    continue;
                };
                let r = if conditions.is_empty() {
                    ctx.add_rule(rule.action.to_scmp(), syscall)
                } else {
                    ctx.add_rule_conditional(rule.action.to_scmp(), syscall, &conditions)
                };
                r.map_err(|e| {
                    invalid(format!(
                        "linux.seccomp.syscalls[{}]: libseccomp {} refused the rule for {name:?}: {e}",
                        rule.source,
                        library_version()
                    ))
                })?;
                added += 1;
            }
        }
        Ok(Filter {
            ctx,
            flags: self.flags,
            skipped,
            rules: added,
        })
    }
}

impl Filter {
    /// Generates the BPF program.
    pub fn program(&self) -> Result<Program> {
        let failed = |e: String| {
            invalid(format!(
                "linux.seccomp: libseccomp {} could not generate the filter: {e}",
                library_version()
            ))
        };
        let mut out = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"husk-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| failed(format!("memfd_create: {e}")))?,
        );
        self.ctx
            .export_bpf(&out)
            .map_err(|e| failed(e.to_string()))?;
        let mut bytes = Vec::new();
        out.rewind()
            .and_then(|()| out.read_to_end(&mut bytes))
            .map_err(|e| failed(format!("read back: {e}")))?;
        let program = Program::from_bytes(self.flags.bits(), &bytes).map_err(failed)?;
        if program.instructions.len() > libc::BPF_MAXINSNS as usize {
            return Err(invalid(format!(
                "linux.seccomp compiles to {} BPF instructions, more than the kernel's {}: \
                 shorten the profile, or list fewer architectures",
                program.instructions.len(),
                libc::BPF_MAXINSNS
            )));
        }
        Ok(program)
    }
}

/// A compiled filter: what seccomp(2) takes. Serialized as its flags and
/// the instructions in hex (`struct sock_filter`, 8 bytes each, in the
/// host's byte order), so it crosses the init channel compactly.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "WireProgram", into = "WireProgram")]
pub struct Program {
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u32,
    instructions: Vec<libc::sock_filter>,
    /// Filters loaded after this one, in order (see [`compile_all`]).
    stacked: Vec<Program>,
}

#[derive(Serialize, Deserialize)]
struct WireProgram {
    flags: u32,
    bpf: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stacked: Vec<WireProgram>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("flags", &self.flags)
            .field("instructions", &self.instructions.len())
            .field("stacked", &self.stacked)
            .finish()
    }
}

impl Program {
    fn from_bytes(flags: u32, bytes: &[u8]) -> std::result::Result<Program, String> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
            return Err(format!(
                "a BPF program of {} bytes is not a list of 8-byte instructions",
                bytes.len()
            ));
        }
        let instructions = bytes
            .chunks_exact(8)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Program {
            flags,
            instructions,
            stacked: Vec::new(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.instructions.len() * 8);
        for i in &self.instructions {
            bytes.extend_from_slice(&i.code.to_ne_bytes());
            bytes.extend_from_slice(&[i.jt, i.jf]);
            bytes.extend_from_slice(&i.k.to_ne_bytes());
        }
        bytes
    }

    /// How many filters [`Program::load`] installs (this one and those
    /// stacked on it).
    pub fn layers(&self) -> usize {
        1 + self.stacked.len()
    }

    /// How many BPF instructions the first filter has.
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    /// Installs the filter in the calling thread, for good (and in every
    /// thread with `SECCOMP_FILTER_FLAG_TSYNC`), then the stacked ones.
    /// Without no_new_privs the caller needs CAP_SYS_ADMIN in its user
    /// namespace; each filter must allow seccomp(2) for the next to load.
    pub fn load(&self) -> Result<()> {
        self.load_one()?;
        for (i, next) in self.stacked.iter().enumerate() {
            next.load_one().map_err(|e| {
                Error::Init(format!(
                    "stacked seccomp profile {} of annotation {STACKED_ANNOTATION}: {e}",
                    i + 1
                ))
            })?;
        }
        Ok(())
    }

    fn load_one(&self) -> Result<()> {
        let Err(e) = crate::sys::seccomp_set_filter(self.flags, &self.instructions) else {
            return Ok(());
        };
        let hint = match e.raw_os_error() {
            Some(libc::EACCES) => {
                "; without process.noNewPrivileges loading a filter needs CAP_SYS_ADMIN"
            }
            Some(libc::EINVAL) => "; the kernel may not support a flag in linux.seccomp.flags",
            Some(libc::ESRCH) if self.flags & libc::SECCOMP_FILTER_FLAG_TSYNC as u32 != 0 => {
                "; SECCOMP_FILTER_FLAG_TSYNC could not synchronize another thread"
            }
            _ => "",
        };
        Err(Error::Init(format!(
            "load the seccomp filter (linux.seccomp): {e}{hint}"
        )))
    }
}

impl From<Program> for WireProgram {
    fn from(p: Program) -> WireProgram {
        let mut bpf = String::with_capacity(p.instructions.len() * 16);
        for b in p.to_bytes() {
            bpf.push(char::from(HEX[usize::from(b >> 4)]));
            bpf.push(char::from(HEX[usize::from(b & 15)]));
        }
        WireProgram {
            flags: p.flags,
            bpf,
            stacked: p.stacked.into_iter().map(WireProgram::from).collect(),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TryFrom<WireProgram> for Program {
    type Error = String;

    fn try_from(w: WireProgram) -> std::result::Result<Program, String> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(format!(
                "invalid hex digit {:?} in a BPF program",
                c as char
            )),
        };
        let hex = w.bpf.as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err("a BPF program in hex has an odd length".into());
        }
        let bytes = hex
            .chunks_exact(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<std::result::Result<Vec<u8>, String>>()?;
        let mut program = Program::from_bytes(w.flags, &bytes)?;
        program.stacked = w
            .stacked
            .into_iter()
            .map(Program::try_from)
            .collect::<std::result::Result<_, _>>()?;
        Ok(program)
    }
}

/// The installed libseccomp's version, for messages.
pub fn library_version() -> String {
    match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "(unknown version)".into(),
    }
}

/// Every action a profile may name.
const ACTIONS: [LinuxSeccompAction; 8] = [
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];
const OPERATORS: [LinuxSeccompOperator; 7] = [
    LinuxSeccompOperator::ScmpCmpEq,
    LinuxSeccompOperator::ScmpCmpGe,
    LinuxSeccompOperator::ScmpCmpGt,
    LinuxSeccompOperator::ScmpCmpLe,
    LinuxSeccompOperator::ScmpCmpLt,
    LinuxSeccompOperator::ScmpCmpMaskedEq,
    LinuxSeccompOperator::ScmpCmpNe,
];
const ARCHS: [Arch; 24] = [
    Arch::ScmpArchAarch64,
    Arch::ScmpArchArm,
    Arch::ScmpArchLoongarch64,
    Arch::ScmpArchM68k,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchNative,
    Arch::ScmpArchParisc,
    Arch::ScmpArchParisc64,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchRiscv64,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchSh,
    Arch::ScmpArchSheb,
    Arch::ScmpArchX32,
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
];

/// The `linux.seccomp` entry of `husk-runtime features` (runtime-spec
/// features.md): what a profile may use with this libseccomp and kernel.
pub fn features() -> serde_json::Value {
    let archs: Vec<String> = ARCHS
        .iter()
        .filter(|a| {
            ScmpFilterContext::new(ScmpAction::Allow)
                .and_then(|mut c| c.add_arch(arch(**a)).map(drop))
                .is_ok()
        })
        .map(json_name)
        .collect();
    // libseccomp's API level says what the kernel supports: 3 adds the log
    // flag, 4 the speculative-store-bypass one.
    let api = libseccomp::get_api();
    let mut supported = vec!["SECCOMP_FILTER_FLAG_TSYNC"];
    if api >= 3 {
        supported.push("SECCOMP_FILTER_FLAG_LOG");
    }
    if api >= 4 {
        supported.push("SECCOMP_FILTER_FLAG_SPEC_ALLOW");
    }
    serde_json::json!({
        "enabled": true,
        "actions": ACTIONS.iter().map(json_name).collect::<Vec<_>>(),
        "operators": OPERATORS.iter().map(json_name).collect::<Vec<_>>(),
        "archs": archs,
        // WAIT_KILLABLE_RECV is accepted and has no effect without notify.
        "knownFlags": [
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
        ],
        "supportedFlags": supported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("test profile parses")
    }

    fn plan(v: serde_json::Value) -> Result<Plan> {
        Plan::from_spec(&profile(v))
    }

    fn err(v: serde_json::Value) -> String {
        plan(v).unwrap_err().to_string()
    }

    #[test]
    fn actions_translate_as_runc_does() {
        let cases = [
            ("SCMP_ACT_KILL", None, Action::KillThread),
            ("SCMP_ACT_KILL_THREAD", None, Action::KillThread),
            ("SCMP_ACT_KILL_PROCESS", None, Action::KillProcess),
            ("SCMP_ACT_TRAP", None, Action::Trap),
            ("SCMP_ACT_ERRNO", None, Action::Errno(libc::EPERM as u16)),
            ("SCMP_ACT_ERRNO", Some(38), Action::Errno(38)),
            ("SCMP_ACT_ERRNO", Some(0), Action::Errno(0)),
            ("SCMP_ACT_TRACE", None, Action::Trace(1)),
            ("SCMP_ACT_TRACE", Some(7), Action::Trace(7)),
            ("SCMP_ACT_LOG", None, Action::Log),
            ("SCMP_ACT_ALLOW", None, Action::Allow),
        ];
        for (name, errno, want) in cases {
            let mut v = serde_json::json!({"defaultAction": name});
            if let Some(e) = errno {
                v["defaultErrnoRet"] = e.into();
            }
            assert_eq!(plan(v).unwrap().default_action, want, "{name} {errno:?}");
            let mut v = serde_json::json!({
                "defaultAction": "SCMP_ACT_KILL_PROCESS",
                "syscalls": [{"names": ["mkdir"], "action": name}]
            });
            if name == "SCMP_ACT_KILL_PROCESS" {
                v["defaultAction"] = "SCMP_ACT_ALLOW".into();
            }
            if let Some(e) = errno {
                v["syscalls"][0]["errnoRet"] = e.into();
            }
            let p = plan(v).unwrap();
            assert_eq!(p.rules.len(), 1, "{name}");
            assert_eq!(p.rules[0].action, want, "{name} {errno:?}");
            assert_eq!(p.rules[0].names, vec!["mkdir".to_string()]);
        }
    }

    #[test]
    fn errno_ret_is_refused_where_no_errno_is_returned() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[0].errnoRet") && e.contains("SCMP_ACT_ALLOW"),
            "{e}"
        );
        let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1}));
        assert!(e.contains("linux.seccomp.defaultErrnoRet"), "{e}");
        let e =
            err(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}));
        assert!(e.contains("defaultErrnoRet 70000 is out of range"), "{e}");
    }

    #[test]
    fn notify_is_refused_clearly() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(e.contains("linux.seccomp.syscalls[0].action"), "{e}");
        assert!(e.contains(NOTIFY_UNSUPPORTED), "{e}");
        let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
    }

    #[test]
    fn unknown_action_arch_op_and_flag_name_the_field() {
        // oci-spec's enums refuse them while parsing; spec::parse names the path.
        let base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}}
        });
        crate::spec::parse(base.to_string().as_bytes()).unwrap();
        for (path, bad) in [
            ("linux.seccomp.defaultAction", "SCMP_ACT_BOGUS"),
            ("linux.seccomp.syscalls[0].action", "SCMP_ACT_NOPE"),
            ("linux.seccomp.syscalls[0].args[0].op", "SCMP_CMP_XOR"),
            ("linux.seccomp.architectures[0]", "SCMP_ARCH_Z80"),
            ("linux.seccomp.flags[0]", "SECCOMP_FILTER_FLAG_X"),
        ] {
            let pointer = format!("/{}", path.replace(['.', '['], "/").replace(']', ""));
            let mut v = base.clone();
            *v.pointer_mut(&pointer).expect(&pointer) = bad.into();
            let e = crate::spec::parse(v.to_string().as_bytes()).unwrap_err();
            assert!(e.contains(path) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn argument_operators_translate() {
        let ops = [
            ("SCMP_CMP_NE", Op::Ne, 5),
            ("SCMP_CMP_LT", Op::Lt, 5),
            ("SCMP_CMP_LE", Op::Le, 5),
            ("SCMP_CMP_EQ", Op::Eq, 5),
            ("SCMP_CMP_GE", Op::Ge, 5),
            ("SCMP_CMP_GT", Op::Gt, 5),
            // value is the mask, valueTwo the datum.
            ("SCMP_CMP_MASKED_EQ", Op::MaskedEq { mask: 5 }, 4),
        ];
        for (i, (name, op, value)) in ops.into_iter().enumerate() {
            let p = plan(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": i % MAX_ARGS, "value": 5, "valueTwo": 4, "op": name}]}]
            }))
            .unwrap();
            assert_eq!(
                p.rules[0].conditions,
                vec![Condition {
                    index: (i % MAX_ARGS) as u32,
                    op,
                    value
                }],
                "{name}"
            );
            p.build().unwrap();
        }
    }

    #[test]
    fn argument_index_must_exist() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 2, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[0].args[0].index is 6"),
            "{e}"
        );
    }

    #[test]
    fn two_comparisons_of_one_argument_become_two_rules() {
        let p = plan(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}]}]
        }))
        .unwrap();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].conditions[0].value, 2);
        assert_eq!(p.rules[1].conditions[0].value, 10);
        let f = p.build().unwrap();
        assert_eq!(f.rules, 2);
        // Different arguments stay one rule (ANDed).
        let p = plan(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }))
        .unwrap();
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].conditions.len(), 2);
        p.build().unwrap();
    }

    #[test]
    fn rules_with_the_default_action_are_dropped() {
        let p = plan(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["unlink"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .unwrap();
        let names: Vec<&str> = p.rules.iter().map(|r| r.names[0].as_str()).collect();
        assert_eq!(names, ["unlink", "read"]);
        assert_eq!(p.rules[0].source, 2);
        p.build().unwrap();
    }

    #[test]
    fn unknown_syscalls_are_skipped() {
        let f = filter_of(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "husk_future_syscall", "write"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .unwrap();
        assert_eq!(f.skipped, vec!["husk_future_syscall".to_string()]);
        assert_eq!(f.rules, 2);
        validate(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["husk_future_syscall"], "action": "SCMP_ACT_KILL"}]
        })))
        .unwrap();
    }

    #[test]
    fn empty_or_bad_names_are_refused() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": [], "action": "SCMP_ACT_KILL"}]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[0].names is empty"),
            "{e}"
        );
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read", "mk dir"], "action": "SCMP_ACT_KILL"}]
        }));
        assert!(e.contains("\"mk dir\""), "{e}");
    }

    /// libseccomp's pseudo filter code of `f`, to check what the kernel gets.
    fn pfc(f: &Filter) -> String {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile().unwrap();
        f.ctx.export_pfc(&out).unwrap();
        out.rewind().unwrap();
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn overlapping_rules_keep_the_first_as_runc_does() {
        let f = filter_of(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["mkdir"], "action": "SCMP_ACT_KILL"}
            ]
        })))
        .unwrap();
        let code = pfc(&f);
        assert!(code.contains("action ERRNO(13)"), "{code}");
        assert!(!code.contains("action KILL;\n  # default"), "{code}");
    }

    #[test]
    fn arguments_reach_the_filter() {
        let f = filter_of(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 2048, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        })))
        .unwrap();
        let code = pfc(&f);
        assert!(code.contains("action ERRNO(13)"), "{code}");
        assert!(code.contains("$a0.lo32 == 2"), "{code}");
        assert!(code.contains("$a1.lo32 & 0x00000800 == 2048"), "{code}");
    }

    #[test]
    fn architectures_and_flags() {
        let p = plan(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                      "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
        }))
        .unwrap();
        assert_eq!(
            p.architectures,
            [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        assert_eq!(
            p.flags,
            Flags {
                tsync: true,
                log: true,
                spec_allow: true
            }
        );
        p.build().unwrap();
        // The native architecture is always there; adding it again is fine.
        plan(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_NATIVE"]
        }))
        .unwrap()
        .build()
        .unwrap();
    }

    #[test]
    fn features_list_what_profiles_may_use() {
        let f = features();
        assert_eq!(f["enabled"], true);
        let actions = f["actions"].as_array().unwrap();
        assert!(actions.contains(&"SCMP_ACT_ERRNO".into()));
        assert!(!actions.contains(&"SCMP_ACT_NOTIFY".into()));
        assert_eq!(f["operators"].as_array().unwrap().len(), 7);
        let archs = f["archs"].as_array().unwrap();
        assert!(archs.contains(&"SCMP_ARCH_X86_64".into()), "{archs:?}");
        assert!(archs.contains(&"SCMP_ARCH_AARCH64".into()), "{archs:?}");
        assert!(f["supportedFlags"]
            .as_array()
            .unwrap()
            .contains(&"SECCOMP_FILTER_FLAG_TSYNC".into()));
    }

    /// A Docker-sized profile: an allow list of every syscall libseccomp
    /// knows on this machine (about 370 on x86_64), a few names it does not
    /// know, and Docker's argument rules for personality and clone.
    fn docker_sized() -> serde_json::Value {
        let names: Vec<String> = (0..1024)
            .filter_map(|n| ScmpSyscall::from(n).get_name().ok())
            .filter(|n| !["personality", "clone", "socket"].contains(&n.as_str()))
            .chain(["husk_new_a".into(), "husk_new_b".into()])
            .collect();
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": names, "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 131072, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        })
    }

    fn filter_of(profile: &LinuxSeccomp) -> Result<Filter> {
        Plan::from_spec(profile)?.build()
    }

    #[test]
    fn programs_cross_the_channel_intact() {
        let p = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .unwrap();
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG as u32);
        assert!(p.len() > 4, "{p:?}");
        let json = serde_json::to_string(&p).unwrap();
        let back: Program = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_bytes(), p.to_bytes());
        assert_eq!(back.flags, p.flags);
        for bad in [
            r#"{"flags":0,"bpf":"abc"}"#,
            r#"{"flags":0,"bpf":"zz00000000000000"}"#,
            r#"{"flags":0,"bpf":""}"#,
            r#"{"flags":0,"bpf":"00112233"}"#,
        ] {
            assert!(serde_json::from_str::<Program>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stacked_profiles_load_in_order_and_cross_the_channel() {
        let first = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "exit_group", "seccomp"], "action": "SCMP_ACT_ALLOW"}]
        });
        let second = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["write"], "action": "SCMP_ACT_ERRNO"}]
        });
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"seccomp": first},
            "annotations": {STACKED_ANNOTATION: serde_json::json!([second]).to_string()}
        }))
        .unwrap();
        let all = profiles(&spec).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].default_action(), LinuxSeccompAction::ScmpActErrno);
        let p = compile_all(&all).unwrap().unwrap();
        assert_eq!(p.layers(), 2);
        let back: Program = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.layers(), 2);
        assert_eq!(back.stacked[0].to_bytes(), p.stacked[0].to_bytes());
        assert!(compile_all(&[]).unwrap().is_none());
        // Old single-filter state files still parse.
        let single = serde_json::to_string(&compile(&all[0]).unwrap()).unwrap();
        assert!(!single.contains("stacked"), "{single}");
        assert_eq!(
            serde_json::from_str::<Program>(&single).unwrap().layers(),
            1
        );
    }

    #[test]
    fn a_bad_stacked_annotation_names_itself() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {STACKED_ANNOTATION: "[{\"defaultAction\": \"SCMP_ACT_BOGUS\"}]"}
        }))
        .unwrap();
        let err = profiles(&spec).unwrap_err().to_string();
        assert!(err.contains(STACKED_ANNOTATION), "{err}");
        assert!(err.contains("[0].defaultAction"), "{err}");
    }

    #[test]
    fn unsupported_architectures_fail_validation() {
        let supported = features()["archs"].clone();
        for a in ARCHS {
            let name = json_name(&a);
            let v = profile(
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [name]}),
            );
            match validate(&v) {
                Ok(()) => assert!(
                    supported.as_array().unwrap().contains(&name.clone().into()),
                    "{name}"
                ),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("linux.seccomp.architectures[0]") && e.contains(&name),
                        "{e}"
                    );
                }
            }
        }
    }

    fn cpu_now() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Median CPU time of `f` (CPU, not wall, time: the tests share the
    /// machine with builds).
    fn median_cpu<T>(runs: usize, mut f: impl FnMut() -> T) -> std::time::Duration {
        let mut times: Vec<_> = (0..runs)
            .map(|_| {
                let t = cpu_now();
                std::hint::black_box(f());
                cpu_now() - t
            })
            .collect();
        times.sort();
        times[runs / 2]
    }

    #[test]
    fn docker_sized_profile_costs() {
        let mut v = docker_sized();
        let names = v["syscalls"][0]["names"].as_array().unwrap().len();
        assert!(names > 300, "only {names} names");
        let three = profile(v.clone());
        v.as_object_mut().unwrap().remove("architectures");
        let native = profile(v);
        compile(&three).unwrap(); // libseccomp's lazy state
        let program = compile(&three).unwrap();
        let wire = serde_json::to_string(&program).unwrap();
        let runs = 21;
        let validate_t = median_cpu(runs, || validate(&three).unwrap());
        let native_t = median_cpu(runs, || compile_uncached(&native).unwrap());
        let three_t = median_cpu(runs, || compile_uncached(&three).unwrap());
        let cached_t = median_cpu(runs, || compile(&three).unwrap());
        let decode_t = median_cpu(runs, || serde_json::from_str::<Program>(&wire).unwrap());
        println!(
            "seccomp, {names} syscalls: validate {validate_t:?}; compile native-only {native_t:?} ({} insns), \
             x86_64+x86+x32 {three_t:?} ({} insns, {} bytes on the wire), again from the cache {cached_t:?}; \
             decode in the init {decode_t:?}",
            compile(&native).unwrap().len(),
            program.len(),
            wire.len()
        );
        // Generous (debug builds, shared machine), still catching blowups.
        assert!(
            validate_t < std::time::Duration::from_millis(5),
            "{validate_t:?}"
        );
        assert!(
            decode_t < std::time::Duration::from_millis(5),
            "{decode_t:?}"
        );
        assert!(cached_t < three_t / 2, "{cached_t:?} vs {three_t:?}");
        assert_eq!(compile(&three).unwrap().to_bytes(), program.to_bytes());
    }
}
