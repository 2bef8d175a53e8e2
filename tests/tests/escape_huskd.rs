//! The escape suite through huskd: every vector of the catalogue
//! (tests/tests/escape_common) as root inside a container started by a
//! private huskd with `husk run --rm --runtime hardened`, which must block
//! it. The side-by-side table with native and runc is `escape.rs`'s
//! (through containerd). Also: ordinary workloads still run on hardened
//! under huskd (a shell script, a compiled C program, an HTTP server).

#[path = "escape_common/mod.rs"]
#[macro_use]
mod escape;

use escape::{HuskdEnv, Target};
use husk_tests::{command, require_root, unique_id};

/// Runs one vector on the hardened runtime through huskd, prints its row
/// and asserts that it was blocked.
fn vector(name: &str, f: escape::VectorFn) {
    let env = HuskdEnv::start();
    let outcome = f(&env, Target::Hardened, &unique_id("husk-esc"));
    escape::print_table(&[(name, vec![(Target::Hardened, outcome.clone())])]);
    assert!(
        outcome.is_blocked(),
        "{name} on huskd --runtime hardened: {outcome}\nhuskd log:\n{}",
        env.d.log()
    );
    // `husk run --rm` left nothing behind.
    assert_eq!(env.d.container_ids(), Vec::<String>::new());
}

vector_tests!(vector);

#[test]
fn hardened_runs_ordinary_workloads_under_huskd() {
    require_root!();
    let env = HuskdEnv::start();
    let t = Target::Hardened;
    escape::runs_a_script_and_a_c_program(&env, t);
}

/// A small HTTP server when network is granted. huskd has no network
/// option: every container gets its own network namespace with only a
/// loopback that is down, and the hardened profile never grants
/// CAP_NET_ADMIN, so the container cannot bring it up itself. The host
/// grants it (as CNI would plumb an interface): `nsenter -n` into the
/// container's namespace and `ip link set lo up`. The server waits for
/// that, then serves; `husk exec` fetches a page from inside.
#[test]
fn hardened_serves_http_under_huskd_when_the_host_grants_loopback() {
    require_root!();
    husk_tests::require_command("nsenter");
    let env = HuskdEnv::start();
    let id = unique_id("husk-http");
    let out = env.d.husk_ok(&[
        "run",
        "-d",
        "--name",
        &id,
        "--runtime",
        Target::Hardened.huskd_name(),
        escape::IMAGE,
        "/bin/sh",
        "-c",
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
         until ip addr show lo | grep -q 127.0.0.1; do sleep 0.05; done && \
         exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    ]);
    assert!(!out.trim().is_empty(), "husk run -d printed no id");
    env.d.wait_status(&id, "running");
    let pid = env.d.inspect(&id)["pid"].as_u64().expect("a running pid");
    husk_tests::host::bring_up_loopback_of(pid as u32);
    // The server starts once it sees the address: retry for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let out = env.d.husk(&[
            "exec",
            &id,
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8080/index.html",
        ]);
        if out.status.success() {
            break command::stdout_text(&out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no page from httpd in 10 s: {}\nhuskd log:\n{}",
            command::format_output(&out),
            env.d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(page, "served\n");
    env.d.husk_ok(&["rm", "-f", &id]);
    assert_eq!(env.d.container_ids(), Vec::<String>::new());
}
