//! `linux.seccomp` on the real kernel: each promise of husk-runtime's
//! seccomp support has its own test, driven through the CLI as containerd's
//! runc shim drives it.

use std::process::Output;

use husk_tests::command::{stderr_text as stderr, stdout_text as stdout};
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{require_root, unique_id, Bundle, HuskRuntime};
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, UserBuilder};

/// A busybox bundle running `sh -c script` under `profile`.
fn bundle_with(profile: serde_json::Value, script: &str) -> Bundle {
    let profile: LinuxSeccomp = serde_json::from_value(profile).expect("test profile parses");
    let mut bundle = Bundle::busybox(&["sh", "-c", script]);
    bundle.linux_mut().set_seccomp(Some(profile));
    bundle.save();
    bundle
}

/// The `Seccomp:` mode of the shell running `script`: 2 is "filter".
const SHOW_MODE: &str = "grep '^Seccomp:' /proc/self/status";

/// Allows everything but mkdir, which fails with EPERM.
fn deny_mkdir() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    })
}

#[test]
fn a_denied_syscall_fails_with_its_errno_and_the_rest_works() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-mkdir");
    let script = format!(
        "mkdir /tmp/x && echo made; {SHOW_MODE}; touch /tmp/f && echo touched; \
         ls -d /tmp/x 2>/dev/null || echo no-dir"
    );
    let bundle = bundle_with(deny_mkdir(), &script);
    let out = rt.run_bundle_ok(&bundle, &id);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(!text.contains("made"), "{text}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(
        text.contains("touched") && text.contains("no-dir"),
        "{text}"
    );
    assert_no_leaks(&id);
}

#[test]
fn argument_filters_match_on_values() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-args");
    const SETUID: u64 = 0o4000;
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            // IPv4 sockets (AF_INET = 2) fail with EACCES; netlink ones work.
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
            // No setuid bit: mode & S_ISUID == S_ISUID fails with EPERM.
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": SETUID, "valueTwo": SETUID, "op": "SCMP_CMP_MASKED_EQ"}]},
            // fchmodat2 (Linux 6.6) is newer than Debian 12's libseccomp:
            // skipped, as runc skips it.
            {"names": ["fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 2, "value": SETUID, "valueTwo": SETUID, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    });
    let script = "nc 127.0.0.1 9 </dev/null; \
                  ip link show lo >/dev/null && echo netlink-ok; \
                  touch /tmp/f; chmod 755 /tmp/f && echo chmod-ok; \
                  chmod 4755 /tmp/f && echo setuid-ok; stat -c %a /tmp/f";
    let bundle = bundle_with(profile, script);
    let out = rt.run_bundle_ok(&bundle, &id);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(err.contains("socket: Permission denied"), "{err}");
    assert!(text.contains("netlink-ok"), "{text}\n{err}");
    assert!(text.contains("chmod-ok"), "{text}\n{err}");
    assert!(!text.contains("setuid-ok"), "{text}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(text.lines().last(), Some("755"), "{text}");
    assert_no_leaks(&id);
}

#[test]
fn exec_processes_get_the_containers_filter() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-exec");
    let bundle = bundle_with(deny_mkdir(), "sleep 30");
    rt.run_ok(&[
        "run",
        "--detach",
        "--bundle",
        bundle.path().to_str().unwrap(),
        &id,
    ]);
    let out = rt.output(&["exec", &id, "mkdir", "/tmp/y"]);
    assert!(!out.status.success(), "mkdir succeeded in exec");
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    let out = rt.run_ok(&["exec", "--user", "1000:1000", &id, "sh", "-c", SHOW_MODE]);
    assert!(stdout(&out).contains("Seccomp:\t2"), "{}", stdout(&out));
    // State written before the compiled program was kept there: exec
    // compiles the recorded profile itself.
    let state_path = rt.root().join(&id).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert!(state["seccomp_program"].is_object(), "{state}");
    state.as_object_mut().unwrap().remove("seccomp_program");
    std::fs::write(&state_path, state.to_string()).unwrap();
    let out = rt.output(&["exec", &id, "mkdir", "/tmp/z"]);
    assert!(
        !out.status.success() && stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    rt.run_ok(&["delete", "--force", &id]);
    assert_no_leaks(&id);
}

#[test]
fn an_unknown_action_fails_create_naming_the_field() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-badact");
    let bundle = bundle_with(deny_mkdir(), "true");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.config_path()).unwrap()).unwrap();
    json["linux"]["seccomp"]["syscalls"][0]["action"] = "SCMP_ACT_BOGUS".into();
    std::fs::write(bundle.config_path(), json.to_string()).unwrap();
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("linux.seccomp.syscalls[0].action") && err.contains("SCMP_ACT_BOGUS"),
        "{err}"
    );
}

#[test]
fn notify_and_bad_arguments_fail_create_clearly() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-notify");
    let bundle = bundle_with(
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/seccomp-agent.sock",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        }),
        "true",
    );
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("linux.seccomp.syscalls[0].action")
            && err.contains("seccomp notify needs listenerPath support, not implemented"),
        "{err}"
    );
    let id = unique_id("sc-badarg");
    let bundle = bundle_with(
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 9, "value": 2, "op": "SCMP_CMP_EQ"}]}]
        }),
        "true",
    );
    let err = rt.create_fails(&bundle, &id);
    assert!(
        err.contains("linux.seccomp.syscalls[0].args[0].index is 9"),
        "{err}"
    );
}

/// A Docker-like profile: everything not listed fails with EPERM. The list
/// is what busybox's sh, echo and id need, plus, with `init_calls`, what the
/// runtime's own init does after an early load (no no_new_privs): setting
/// credentials, reporting ready, closing descriptors. mkdir is left out to
/// show the default at work.
fn allow_list_profile(init_calls: bool) -> serde_json::Value {
    let mut groups = vec![
        // memory, threads, signals, time
        "brk mmap mprotect munmap mremap madvise futex set_robust_list set_tid_address rseq
         arch_prctl rt_sigaction rt_sigprocmask rt_sigreturn sigaltstack clock_gettime
         clock_nanosleep nanosleep gettimeofday getrandom sched_getaffinity sched_yield",
        // files
        "open openat read readv pread64 write writev pwrite64 close lseek fstat
         newfstatat stat lstat statx statfs fstatfs access faccessat faccessat2 readlink
         readlinkat getdents64 getcwd chdir fchdir fcntl ioctl dup dup2 dup3 pipe pipe2 poll
         ppoll select pselect6",
        // processes and identity
        "execve execveat clone clone3 fork vfork wait4 waitid exit exit_group kill tgkill getpid
         getppid gettid getpgrp setpgid getpgid setsid getsid uname prlimit64 getrlimit
         setrlimit getuid geteuid getgid getegid getresuid getresgid getgroups",
    ];
    if init_calls {
        groups.push(
            "prctl capget capset setgroups setresuid setresgid umask sendmsg sendto recvmsg
             close_range",
        );
    }
    let allowed: Vec<&str> = groups.iter().flat_map(|g| g.split_whitespace()).collect();
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    })
}

const ECHO_AND_MKDIR: &str = "echo ok; id -u; mkdir /tmp/d && echo made; true";

fn assert_ran_under_the_allow_list(out: &Output, uid: &str) {
    let (text, err) = (stdout(out), stderr(out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["ok", uid], "stdout: {text}\nstderr: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
}

#[test]
fn a_default_errno_profile_runs_busybox_with_no_new_privileges() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-nnp");
    // Loaded last, the filter need not allow the init's own syscalls.
    let mut bundle = bundle_with(allow_list_profile(false), ECHO_AND_MKDIR);
    bundle.process_mut().set_no_new_privileges(Some(true));
    bundle.save();
    let out = rt.run_bundle_ok(&bundle, &id);
    assert_ran_under_the_allow_list(&out, "0");
    assert_no_leaks(&id);
}

/// Without no_new_privs the filter needs CAP_SYS_ADMIN to load, which a
/// user with no capabilities lacks: the init must load it before it
/// changes credentials.
#[test]
fn a_default_errno_profile_runs_a_capless_user_without_no_new_privileges() {
    require_root!();
    let rt = HuskRuntime::new();
    let id = unique_id("sc-early");
    let mut bundle = bundle_with(allow_list_profile(true), ECHO_AND_MKDIR);
    let process = bundle.process_mut();
    process.set_no_new_privileges(Some(false));
    process.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap(),
    );
    let none = LinuxCapabilities::default();
    let mut none = none;
    none.set_bounding(Some(Default::default()));
    none.set_effective(Some(Default::default()));
    none.set_inheritable(Some(Default::default()));
    none.set_permitted(Some(Default::default()));
    none.set_ambient(Some(Default::default()));
    process.set_capabilities(Some(none));
    bundle.save();
    let out = rt.run_bundle_ok(&bundle, &id);
    assert_ran_under_the_allow_list(&out, "1000");
    assert_no_leaks(&id);
}
