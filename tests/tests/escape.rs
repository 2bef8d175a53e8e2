//! The escape suite: each vector of the hardened-shim issue is its own
//! test, run as root inside a busybox container through a real containerd
//! 1.6 against husk's hardened shim (which must block it), husk's native
//! shim and Debian's runc shim (recorded, printed, not asserted). Run with
//! `--nocapture` to see each row; `cargo bench -p husk-tests --bench
//! hardened_start -- --table` prints the whole table.
//!
//! Also here: ordinary workloads still run on hardened (a shell script, a
//! compiled C program, an HTTP server over its own loopback), the user
//! namespace and its release, and what Landlock adds, shown through
//! husk-runtime directly.

#[path = "escape_common/mod.rs"]
#[macro_use]
mod escape;

use escape::{Env, Extra, Outcome, Runner, Target};
use husk_tests::{require_root, unique_id, Bundle, HuskRuntime};

/// Runs one vector on every runtime, prints the row, and asserts that the
/// hardened shim blocked it.
fn vector(name: &str, f: escape::VectorFn) {
    let env = Env::start();
    let results: Vec<(Target, Outcome)> = Target::ALL
        .iter()
        .map(|t| (*t, f(&env, *t, &unique_id("husk-esc"))))
        .collect();
    escape::print_table(&[(name, results.clone())]);
    let (_, hardened) = &results[0];
    assert!(
        hardened.is_blocked(),
        "{name} on the hardened shim: {hardened}"
    );
}

vector_tests!(vector);

#[test]
fn hardened_runs_ordinary_workloads() {
    require_root!();
    let env = Env::start();
    let t = Target::Hardened;
    escape::runs_a_script_and_a_c_program(&env, t);
    // A small HTTP server when network is granted: a network namespace
    // prepared by the host (as CNI would), joined by path.
    let netns = unique_id("husk-esc-net");
    let ip = |args: &[&str]| {
        husk_tests::command::output_ok(std::process::Command::new("ip").args(args));
    };
    ip(&["netns", "add", &netns]);
    ip(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]);
    let netns_path = format!("/var/run/netns/{netns}");
    let out = env.run(
        t,
        &unique_id("husk-ord"),
        &[Extra::NetnsPath(&netns_path)],
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
             httpd -p 127.0.0.1:8080 -h /tmp/www && sleep 0.3 && \
             wget -q -O - http://127.0.0.1:8080/index.html",
        ],
    );
    ip(&["netns", "del", &netns]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(husk_tests::command::stdout_text(&out), "served\n");
}

#[test]
fn hardened_root_is_an_unprivileged_host_range_released_on_delete() {
    require_root!();
    let env = Env::start();
    let id = unique_id("husk-userns");
    let out = env.run(
        Target::Hardened,
        &id,
        &[],
        &["/bin/sh", "-c", "cat /proc/self/uid_map; cat /proc/self/status | grep -E '^(CapBnd|NoNewPrivs|Seccomp):'"],
    );
    let stdout = husk_tests::command::stdout_text(&out);
    assert!(out.status.success(), "{out:?}");
    let map: Vec<u64> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(map.len(), 3, "{stdout}");
    assert_eq!(map[0], 0);
    assert!(map[1] >= 1 << 20, "container root is host uid {}", map[1]);
    assert_eq!(map[2], 65536);
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    // Seccomp mode 2: filtered (the profile's filter, whatever the spec had).
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    // CAP_SYS_ADMIN (bit 21) is not in the bounding set.
    let bnd = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap();
    assert_eq!(bnd & (1 << 21), 0, "{stdout}");
    // `ctr run --rm` deleted it: the range is free again.
    let record = std::fs::read_to_string("/run/husk/userns/allocations.json").unwrap_or_default();
    assert!(!record.contains(&format!("\"{id}\"")), "{record}");
}

/// What Landlock adds after pivot_root: a container that can see a host
/// process (here it shares the host's pid namespace) cannot reach the host
/// through its /proc/PID/root magic link, while the same container without
/// Landlock can. Through husk-runtime directly, since the hardened profile
/// never shares the pid namespace.
#[test]
fn landlock_stops_magic_links_to_the_host_tree() {
    require_root!();
    if husk_runtime::landlock::abi().is_none() {
        eprintln!("SKIP: this kernel has no Landlock");
        return;
    }
    // A host process with no capabilities: ptrace rules let root in the
    // container open its /proc entries, so only Landlock stands between.
    let mut host = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "sleep", "120"])
        .spawn()
        .expect("setpriv (util-linux)");
    let pid = host.id();
    let script = format!(
        "if ls /proc/{pid}/root/ >/dev/null 2>&1; then echo REACHED; else echo DENIED; fi; echo > /dev/stdout"
    );
    let rt = HuskRuntime::new();
    let mut outputs = Vec::new();
    for landlock in [false, true] {
        let mut b = Bundle::busybox(&["/bin/sh", "-c", &script]);
        b.update_spec(|s| {
            let linux = s.linux_mut().as_mut().unwrap();
            let ns: Vec<_> = linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
                .collect();
            linux.set_namespaces(Some(ns));
            s.process_mut()
                .as_mut()
                .unwrap()
                .set_no_new_privileges(Some(true));
            if landlock {
                s.set_annotations(Some(
                    [(
                        husk_runtime::landlock::LANDLOCK_ANNOTATION.to_string(),
                        "rootfs".to_string(),
                    )]
                    .into(),
                ));
            }
        });
        let out = rt.run_bundle_ok(&b, &unique_id("husk-landlock"));
        outputs.push(husk_tests::command::stdout_text(&out));
    }
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(outputs[0], "REACHED\n\n", "without Landlock");
    assert_eq!(outputs[1], "DENIED\n\n", "with Landlock");
}

/// The control for the setuid vector: every runtime here sets
/// no_new_privs by default (`ctr run`'s default spec and huskd's spec
/// builder both do), so the catalogue's setuid row is blocked everywhere.
/// Through husk-runtime directly, the same attempt (the same probe, a
/// setuid-root copy of it, uid 1000) gets euid 0 without no_new_privs and
/// is blocked, naming no_new_privs, with it: the image step keeps the bit
/// (the probe refuses a verdict without it) and the probe tells an
/// escalation from a block.
#[test]
fn setuid_vector_escalates_without_no_new_privs() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let probe = escape::build_probe(tmp.path());
    let rt = HuskRuntime::new();
    let mut outcomes = Vec::new();
    for nnp in [false, true] {
        let b = Bundle::busybox(&["/probe", "as", "1000", "/probe-suid", "euid"]);
        let suid = b.rootfs().join("probe-suid");
        std::fs::copy(&probe, b.rootfs().join("probe")).unwrap();
        std::fs::copy(&probe, &suid).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut b = b;
        b.update_spec(|s| {
            let p = s.process_mut().as_mut().unwrap();
            p.set_no_new_privileges(Some(nnp));
            // The probe drops to uid 1000 first: CAP_SETUID and CAP_SETGID.
            let mut caps = p.capabilities().clone().unwrap_or_default();
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(oci_spec::runtime::Capability::Setuid);
                set.insert(oci_spec::runtime::Capability::Setgid);
                Some(set)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
            p.set_capabilities(Some(caps));
        });
        let out = rt.run_bundle(&b, &unique_id("husk-suid"));
        outcomes.push(escape::classify(&out));
    }
    assert!(
        matches!(&outcomes[0], Outcome::Escaped(_)),
        "without no_new_privs: {}",
        outcomes[0]
    );
    assert!(
        matches!(&outcomes[1], Outcome::Blocked(why) if why.contains("no_new_privs")),
        "with no_new_privs: {}",
        outcomes[1]
    );
}
