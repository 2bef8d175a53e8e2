//! The hardened profile's seccomp filter, as Rust data: an allow-list
//! with EPERM for everything else.
//!
//! It starts from what Docker's default profile (moby
//! `profiles/seccomp/default.json`) allows a container without extra
//! capabilities, and takes more away:
//!
//! - everything in [`ALWAYS_DENIED`] (namespaces, mounts, keyrings, bpf,
//!   perf, userfaultfd, ptrace and process_vm_*, modules, kexec, raw I/O
//!   ports, swap, reboot, accounting, setting the clock, file handles,
//!   io_uring, chroot, the new mount API, modify_ldt), whatever the
//!   operator adds to `seccomp.extra_allow`;
//! - `clone` only without namespace flags, `clone3` fails with ENOSYS (its
//!   flags live in memory seccomp cannot read; libc then falls back to
//!   `clone`);
//! - `socket` only for AF_UNIX, and for AF_INET/AF_INET6 of type stream,
//!   datagram or seqpacket (no SOCK_RAW, no SOCK_PACKET), and AF_NETLINK
//!   with protocol NETLINK_ROUTE only. NETLINK_ROUTE stays because glibc's
//!   `getaddrinfo(AI_ADDRCONFIG)` and `ip`/`ifconfig` read interfaces
//!   through it; it only reaches the container's own network namespace,
//!   where changes need CAP_NET_ADMIN, which the profile never grants.
//!   AF_VSOCK, AF_PACKET, AF_ALG, the other netlink protocols (audit,
//!   uevents, netfilter, ...) and every other family fail with EPERM;
//! - `ioctl(TIOCSTI)` (typing into the controlling terminal) is refused;
//! - `personality` only with the values Docker allows;
//! - only the native architecture: 32-bit syscall entry points are killed
//!   (libseccomp's action for a foreign architecture).

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Allowed without conditions.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir",
    "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr",
    "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync",
    "ftruncate", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "lchown",
    "lgetxattr", "link", "linkat", "listxattr", "llistxattr", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open",
    "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "removexattr", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "splice", "stat", "statfs",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
    "umask", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vmsplice", "write",
    "writev",
    // polling, events, pipes
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "eventfd", "eventfd2", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "pipe", "pipe2", "poll", "ppoll", "pselect6", "select", "signalfd",
    "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_settime",
    // asynchronous I/O (not io_uring)
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit",
    // memory
    "brk", "madvise", "membarrier", "memfd_create", "mincore", "mlock", "mlock2", "mlockall",
    "mmap", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc",
    "pkey_free", "pkey_mprotect",
    // processes and threads
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrlimit", "getrusage", "getsid", "gettid", "ioprio_get", "ioprio_set",
    "kill", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "restart_syscall",
    "rseq", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "set_robust_list", "set_thread_area", "set_tid_address", "setpgid",
    "setpriority", "setrlimit", "setsid", "tgkill", "tkill", "vfork", "wait4", "waitid",
    // futexes and signals
    "futex", "futex_waitv", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_tgsigqueueinfo", "sigaltstack",
    // credentials (the capability sets decide what they may do)
    "getegid", "geteuid", "getgid", "getgroups", "getresgid", "getresuid", "getuid",
    "setfsgid", "setfsuid", "setgid", "setgroups", "setregid", "setresgid", "setresuid",
    "setreuid", "setuid",
    // time (reading it; setting it is denied)
    "adjtimex", "alarm", "clock_adjtime", "clock_getres", "clock_gettime", "clock_nanosleep",
    "getitimer", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "times",
    // System V and POSIX IPC (the container's own ipc namespace)
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink",
    "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "shmat", "shmctl", "shmdt", "shmget",
    // sockets (socket itself is conditional, below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recvfrom", "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown", "socketpair",
    // system information, randomness, self-confinement
    "getrandom", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "seccomp", "sysinfo", "uname",
];

/// Never allowed, whatever the operator's profile says. Most are simply
/// absent from [`ALLOWED`]; listing them lets the profile refuse an
/// `extra_allow` that names one, and the tests check the two lists apart.
#[rustfmt::skip]
pub const ALWAYS_DENIED: &[&str] = &[
    // namespaces and mounts
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen",
    "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    // keyrings
    "keyctl", "add_key", "request_key",
    // kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "lookup_dcookie", "fanotify_init", "quotactl", "quotactl_fd",
    "modify_ldt", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl",
    // other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
    "kcmp", "pidfd_getfd", "move_pages", "migrate_pages", "mbind", "set_mempolicy",
    "get_mempolicy", "set_mempolicy_home_node",
    // the machine
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "iopl", "ioperm", "swapon",
    "swapoff", "reboot", "acct", "clock_settime", "settimeofday", "stime", "syslog",
    "vhangup", "sethostname", "setdomainname",
    // file handles bypass path checks (the "shocker" escape)
    "open_by_handle_at", "name_to_handle_at",
    // new namespaces through their flags (allowed forms are conditional)
    "clone3",
];

/// clone(2) flags that create namespaces. `clone` is allowed only when
/// none is set (CLONE_NEWTIME only exists for clone3 and unshare).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Socket families allowed for every type the profile allows.
const INET_FAMILIES: [i32; 2] = [libc::AF_INET, libc::AF_INET6];
/// Socket types (low four bits of `type`) allowed for INET families.
const INET_TYPES: [i32; 3] = [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET];
/// `personality(2)` values Docker allows: PER_LINUX, PER_LINUX32,
/// UNAME26, PER_LINUX32|UNAME26, and 0xffffffff (query).
const PERSONALITIES: [u64; 5] = [0, 8, 0x20000, 0x20008, 0xffff_ffff];

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, two: Option<u64>) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    match two {
        Some(two) => b.value_two(two),
        None => b,
    }
    .build()
    .expect("a seccomp argument builds")
}

fn rule(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(action)
        .args(args)
        .build()
        .expect("a seccomp rule with names and an action builds")
}

/// The conditional rules: clone, clone3, socket, ioctl, personality.
fn conditional_rules() -> Vec<LinuxSyscall> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpMaskedEq as Masked, ScmpCmpNe as Ne};
    let mut rules = vec![
        // arg & mask == 0 (libseccomp: `value` is the mask, `valueTwo` the datum).
        rule(
            &["clone"],
            Allow,
            vec![arg(0, Masked, CLONE_NAMESPACE_FLAGS, Some(0))],
        ),
        {
            let mut r = rule(&["clone3"], Errno, Vec::new());
            r.set_errno_ret(Some(libc::ENOSYS as u32));
            r
        },
        rule(&["ioctl"], Allow, vec![arg(1, Ne, libc::TIOCSTI, None)]),
        rule(
            &["socket"],
            Allow,
            vec![arg(0, Eq, libc::AF_UNIX as u64, None)],
        ),
        rule(
            &["socket"],
            Allow,
            vec![
                arg(0, Eq, libc::AF_NETLINK as u64, None),
                arg(2, Eq, libc::NETLINK_ROUTE as u64, None),
            ],
        ),
    ];
    for family in INET_FAMILIES {
        for typ in INET_TYPES {
            rules.push(rule(
                &["socket"],
                Allow,
                vec![
                    arg(0, Eq, family as u64, None),
                    arg(1, Masked, 0xf, Some(typ as u64)),
                ],
            ));
        }
    }
    for p in PERSONALITIES {
        rules.push(rule(&["personality"], Allow, vec![arg(0, Eq, p, None)]));
    }
    rules
}

/// The default filter with the operator's `extra_allow` (which
/// [`super::Profile::validate`] has checked against [`ALWAYS_DENIED`]).
pub fn profile(extra_allow: &[String]) -> LinuxSeccomp {
    let mut names: Vec<&str> = ALLOWED.to_vec();
    names.extend(extra_allow.iter().map(String::as_str));
    let mut syscalls = vec![rule(&names, LinuxSeccompAction::ScmpActAllow, Vec::new())];
    syscalls.extend(conditional_rules());
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .expect("the default seccomp profile builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Action, Op, Plan};
    use std::collections::HashSet;

    fn allowed_unconditionally(p: &Plan) -> HashSet<String> {
        p.rules
            .iter()
            .filter(|r| r.action == Action::Allow && r.conditions.is_empty())
            .flat_map(|r| r.names.clone())
            .collect()
    }

    #[test]
    fn the_lists_are_apart_and_have_no_duplicates() {
        let allowed: HashSet<_> = ALLOWED.iter().collect();
        let denied: HashSet<_> = ALWAYS_DENIED.iter().collect();
        assert_eq!(allowed.len(), ALLOWED.len(), "duplicate in ALLOWED");
        assert_eq!(
            denied.len(),
            ALWAYS_DENIED.len(),
            "duplicate in ALWAYS_DENIED"
        );
        let both: Vec<_> = allowed.intersection(&denied).collect();
        assert!(both.is_empty(), "{both:?}");
    }

    #[test]
    fn every_issue_listed_syscall_is_denied() {
        let plan = Plan::from_spec(&profile(&[])).unwrap();
        assert_eq!(plan.default_action, Action::Errno(libc::EPERM as u16));
        let allowed = allowed_unconditionally(&plan);
        let conditional: HashSet<String> = plan
            .rules
            .iter()
            .filter(|r| !r.conditions.is_empty())
            .flat_map(|r| r.names.clone())
            .collect();
        for name in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "ptrace",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "iopl",
            "ioperm",
            "swapon",
            "swapoff",
            "reboot",
            "acct",
            "clock_settime",
            "settimeofday",
        ] {
            assert!(ALWAYS_DENIED.contains(&name), "{name} not in ALWAYS_DENIED");
            assert!(!allowed.contains(name), "{name} allowed");
            assert!(!conditional.contains(name), "{name} conditionally allowed");
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags_and_clone3_is_enosys() {
        let plan = Plan::from_spec(&profile(&[])).unwrap();
        let clone: Vec<_> = plan.rules.iter().filter(|r| r.names == ["clone"]).collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].action, Action::Allow);
        assert_eq!(
            clone[0].conditions[0].op,
            Op::MaskedEq {
                mask: CLONE_NAMESPACE_FLAGS
            }
        );
        assert_eq!(clone[0].conditions[0].value, 0);
        // Docker's mask, spelled out.
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7E02_0000);
        let clone3: Vec<_> = plan
            .rules
            .iter()
            .filter(|r| r.names == ["clone3"])
            .collect();
        assert_eq!(clone3[0].action, Action::Errno(libc::ENOSYS as u16));
    }

    #[test]
    fn sockets_only_for_unix_inet_and_netlink_route() {
        let plan = Plan::from_spec(&profile(&[])).unwrap();
        let socket: Vec<_> = plan
            .rules
            .iter()
            .filter(|r| r.names == ["socket"])
            .collect();
        assert!(socket.iter().all(|r| r.action == Action::Allow));
        // Every socket rule pins the family.
        let families: HashSet<u64> = socket
            .iter()
            .map(|r| {
                let c = r.conditions.iter().find(|c| c.index == 0).unwrap();
                assert_eq!(c.op, Op::Eq);
                c.value
            })
            .collect();
        let want: HashSet<u64> = [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ]
        .iter()
        .map(|f| *f as u64)
        .collect();
        assert_eq!(families, want);
        for r in &socket {
            let family = r.conditions[0].value as i32;
            if family == libc::AF_INET || family == libc::AF_INET6 {
                let t = r.conditions.iter().find(|c| c.index == 1).unwrap();
                assert_eq!(t.op, Op::MaskedEq { mask: 0xf });
                assert_ne!(t.value, libc::SOCK_RAW as u64);
                // SOCK_PACKET, the legacy packet socket type.
                assert_ne!(t.value, 10);
            }
            if family == libc::AF_NETLINK {
                let p = r.conditions.iter().find(|c| c.index == 2).unwrap();
                assert_eq!((p.op, p.value), (Op::Eq, libc::NETLINK_ROUTE as u64));
            }
        }
        assert!(!allowed_unconditionally(&plan).contains("socket"));
    }

    #[test]
    fn stricter_than_docker_where_docker_allows_without_capabilities() {
        // Docker's default allows these to every container; this one does not.
        let allowed: HashSet<_> = ALLOWED.iter().copied().collect();
        for name in [
            "ptrace",
            "process_vm_readv",
            "io_uring_setup",
            "name_to_handle_at",
            "modify_ldt",
            "chroot",
            "remap_file_pages",
            "memfd_secret",
        ] {
            assert!(!allowed.contains(name), "{name}");
        }
    }

    #[test]
    fn the_profile_compiles_with_libseccomp() {
        let program = crate::seccomp::compile(&profile(&[])).unwrap();
        assert!(program.len() > 100, "{program:?}");
    }
}
