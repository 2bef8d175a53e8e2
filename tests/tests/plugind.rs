//! The plugin service, `husk-plugind`: shims start it on demand (once, even
//! under concurrent creates), a killed one is started again by the next
//! create, a service that dies during a create fails it closed (or lets it
//! through with on-error allow), bad frames get errors and never stop it,
//! its socket is root-only, it exits when idle, and nothing is left behind.
//!
//! Every huskd here has its own socket (`husk_tests::plugind::socket_in`,
//! set by the `Huskd` helper), and the helper stops the daemon at the end.

mod core_common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use core_common::{Huskd, IMAGE};
use husk_tests::command::stderr_text as stderr;
use husk_tests::plugin_config::{capability_mask, plugin_file, PluginsToml, CAP_NET_RAW_BIT};
use husk_tests::plugind::{self, Plugind};
use husk_tests::require_root;

fn huskd_with_policy() -> Huskd {
    let d = Huskd::start();
    d.import_busybox();
    // Without a plugin, no shim needs the service.
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    assert!(plugind::daemons(&socket_of(&d)).is_empty());
    let path = plugin_file("rust-policy.wasm");
    d.husk_ok(&[
        "plugin",
        "install",
        path.to_str().unwrap(),
        "--name",
        "security",
    ]);
    d
}

fn socket_of(d: &Huskd) -> std::path::PathBuf {
    plugind::socket_in(d.tmp.path())
}

/// A run under the policy, which must succeed with the policy applied (its
/// edit drops CAP_NET_RAW): proof that the service ran the plugin.
fn run_under_policy(d: &Huskd) {
    let out = d.husk(&["run", "--rm", IMAGE, "grep", "CapBnd", "/proc/1/status"]);
    assert!(
        out.status.success(),
        "{}\nhuskd log:\n{}",
        stderr(&out),
        d.log()
    );
    let mask = capability_mask(&String::from_utf8_lossy(&out.stdout), "CapBnd:").unwrap();
    assert_eq!(mask & CAP_NET_RAW_BIT, 0, "the policy did not run");
}

fn one_daemon(socket: &Path) -> u32 {
    let found = plugind::daemons(socket);
    assert_eq!(found.len(), 1, "husk-plugind processes: {found:?}");
    found[0].pid
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugind::alive(pid) {
        assert!(Instant::now() < deadline, "husk-plugind {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serving_lines(socket: &Path) -> usize {
    plugind::log(socket)
        .lines()
        .filter(|l| l.contains("husk-plugind serving"))
        .count()
}

#[test]
fn the_first_shim_starts_the_service_and_concurrent_creates_start_only_one() {
    require_root!();
    let d = huskd_with_policy();
    let socket = socket_of(&d);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| run_under_policy(&d));
        }
    });
    let pid = one_daemon(&socket);
    assert_eq!(serving_lines(&socket), 1, "log:\n{}", plugind::log(&socket));
    // It stays warm: the next containers use the same daemon.
    run_under_policy(&d);
    assert_eq!(one_daemon(&socket), pid);
    // Root-only, in a private directory.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    drop(d);
    assert!(
        plugind::daemons(&socket).is_empty(),
        "the helper stops the daemon"
    );
}

#[test]
fn a_killed_service_is_started_again_by_the_next_create() {
    require_root!();
    let d = huskd_with_policy();
    let socket = socket_of(&d);
    run_under_policy(&d);
    let first = one_daemon(&socket);
    // SAFETY: kill(2) of the daemon's pid.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_gone(first);
    assert!(socket.exists(), "kill -9 leaves the socket file behind");
    run_under_policy(&d);
    let second = one_daemon(&socket);
    assert_ne!(first, second);
    assert_eq!(serving_lines(&socket), 2);
}

/// Release 1's husk-plugind, as far as a newer client sees it: it refuses
/// every request of another version with its words, and on SIGTERM
/// unlinks its socket and exits. (A stand-in: CI does not build the
/// previous release.)
const RELEASE_1_SERVICE: &str = r#"
import json, os, signal, socket, struct, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o600)
s.listen(16)
def bye(*_):
    os.unlink(path)
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
print("serving", flush=True)
while True:
    c, _ = s.accept()
    try:
        while True:
            h = c.recv(4, socket.MSG_WAITALL)
            if len(h) < 4:
                break
            req = json.loads(c.recv(struct.unpack(">I", h)[0], socket.MSG_WAITALL))
            msg = ("the request speaks protocol version %s, this husk-plugind speaks 1; "
                   "restart husk-plugind (stop it: the next shim starts the installed one)"
                   % req.get("version"))
            out = json.dumps({"error": {"kind": "bad_request", "message": msg}}).encode()
            c.sendall(struct.pack(">I", len(out)) + out)
    except OSError:
        pass
    c.close()
"#;

/// After an upgrade the service on the socket may be the previous
/// release's, which refuses this protocol version (and, kept alive by the
/// requests it refuses, would never idle out). The next create stops it
/// and starts the installed husk-plugind, and runs under the policy.
#[test]
fn an_older_service_is_replaced_by_the_installed_one() {
    require_root!();
    let d = huskd_with_policy();
    let socket = socket_of(&d);
    run_under_policy(&d);
    // Under the starters' lock: a spare shim's preload cannot start the
    // installed one between the stop and the stand-in's bind.
    let lock = std::fs::File::create(socket.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    plugind::stop(&socket);
    assert!(
        !socket.exists(),
        "a stopped husk-plugind removes its socket"
    );
    let mut old = std::process::Command::new("python3")
        .arg("-c")
        .arg(RELEASE_1_SERVICE)
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut ready = [0u8; 8];
    old.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    assert_eq!(&ready[..7], b"serving");
    drop(lock);

    run_under_policy(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the older service was not stopped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    one_daemon(&socket);
    assert_eq!(
        serving_lines(&socket),
        2,
        "the installed husk-plugind started again:\n{}",
        plugind::log(&socket)
    );
}

/// A create whose service dies under it: the on-error policy decides.
#[test]
fn a_service_dying_during_a_create_fails_it_closed_or_open_by_on_error() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let socket = socket_of(&d);
    let looping = plugin_file("wat-loop.wasm");
    for on_error in ["deny", "allow"] {
        d.husk_ok(&[
            "plugin",
            "install",
            looping.to_str().unwrap(),
            "--name",
            "slow",
            "--time-limit",
            "5000",
            "--on-error",
            on_error,
        ]);
        // Kill the daemon while the looping plugin holds the create: a
        // run takes milliseconds, the loop 5 s, so 1.5 s into the run the
        // create is in the loop. (A spare shim may have started the daemon
        // already, before the run.)
        let killer = std::thread::spawn({
            let socket = socket.clone();
            move || {
                std::thread::sleep(Duration::from_millis(1500));
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(p) = plugind::daemons(&socket).first() {
                        // SAFETY: kill(2) of the daemon's pid.
                        unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
                        return p.pid;
                    }
                    assert!(Instant::now() < deadline, "no husk-plugind to kill");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let t = Instant::now();
        let out = d.husk(&["run", "--rm", IMAGE, "true"]);
        let killed = killer.join().unwrap();
        wait_gone(killed);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the create waited for the time limit: {:?}",
            t.elapsed()
        );
        if on_error == "deny" {
            assert!(!out.status.success(), "allowed without the service");
            let err = stderr(&out);
            assert!(err.contains("husk-plugind"), "{err}");
            assert!(err.contains("fails closed"), "{err}");
        } else {
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
}

fn send_raw(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// One reply frame's JSON, or `None` if the daemon closed the connection.
fn read_reply(stream: &mut UnixStream) -> Option<serde_json::Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

fn frame(json: &[u8]) -> Vec<u8> {
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json);
    f
}

fn error_message(reply: &serde_json::Value) -> String {
    reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error reply: {reply}"))
        .to_string()
}

/// A valid request on a fresh connection gets a real answer.
fn still_serves(p: &Plugind) {
    let mut s = UnixStream::connect(&p.socket).unwrap();
    let req = br#"{"version":1,"op":{"create":{"config":"/nonexistent/husk/plugins.toml","id":"x","spec_json":"{}","runtime":"r","hardened":false}}}"#;
    send_raw(&mut s, &frame(req));
    let reply = read_reply(&mut s).expect("a reply");
    let msg = error_message(&reply);
    assert_eq!(reply["error"]["kind"], "config", "{reply}");
    assert!(msg.contains("/nonexistent/husk/plugins.toml"), "{msg}");
}

#[test]
fn bad_frames_get_errors_and_the_daemon_keeps_serving() {
    require_root!();
    let mut p = Plugind::start(&[]);
    still_serves(&p);

    // Not JSON: an error, and the same connection still works.
    let mut s = UnixStream::connect(&p.socket).unwrap();
    send_raw(&mut s, &frame(b"\x00\xffgarbage"));
    let msg = error_message(&read_reply(&mut s).unwrap());
    assert!(msg.contains("not a husk-plugind request"), "{msg}");
    send_raw(&mut s, &frame(br#"{"version":1,"op":{"launch":{}}}"#));
    let msg = error_message(&read_reply(&mut s).unwrap());
    assert!(msg.contains("bad request"), "{msg}");
    send_raw(&mut s, &frame(br#"{"version":7,"op":{}}"#));
    let msg = error_message(&read_reply(&mut s).unwrap());
    assert!(msg.contains("protocol version 7"), "{msg}");
    // A create with a spec that does not parse.
    let empty = p.tmp.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let req = serde_json::json!({"version": 1, "op": {"create": {
        "config": empty, "id": "x", "spec_json": "{", "runtime": "r", "hardened": false}}});
    send_raw(&mut s, &frame(req.to_string().as_bytes()));
    let reply = read_reply(&mut s).unwrap();
    assert_eq!(reply["error"]["kind"], "spec", "{reply}");
    assert!(error_message(&reply).contains("container x"), "{reply}");
    drop(s);

    // A length past the limit, and an empty frame: an error, then closed.
    for header in [[0xffu8, 0xff, 0xff, 0xff], [0, 0, 0, 0]] {
        let mut s = UnixStream::connect(&p.socket).unwrap();
        send_raw(&mut s, &header);
        let msg = error_message(&read_reply(&mut s).unwrap());
        assert!(msg.contains("bad frame"), "{msg}");
        assert!(read_reply(&mut s).is_none(), "the connection stays open");
    }
    // A frame cut short, and a connection that says nothing.
    let mut s = UnixStream::connect(&p.socket).unwrap();
    send_raw(&mut s, &[0, 0, 1, 0, b'{']);
    drop(s);
    drop(UnixStream::connect(&p.socket).unwrap());

    still_serves(&p);
    assert!(p.child.try_wait().unwrap().is_none(), "the daemon exited");
    let log = p.log();
    assert!(log.contains("bad frame"), "{log}");
}

/// A create of protocol 2 names its bundle: the service reads the spec
/// there and writes the edited spec and husk-policy.json back, and the
/// reply carries no spec. A shim of the previous release (protocol 1)
/// still sends the spec and gets the edited one in its reply. A create
/// with neither, or whose bundle has no spec, gets an error naming it.
#[test]
fn a_create_edits_its_bundle_and_a_version_1_create_gets_the_edited_spec() {
    require_root!();
    let p = Plugind::start(&[]);
    let config = PluginsToml::new(p.tmp.path())
        .plugin("security", "rust-policy.wasm", "")
        .write(&p.tmp.path().join("plugins.toml"));
    // The default spec with CAP_NET_RAW, which the policy drops.
    let mut spec = serde_json::to_value(husk_runtime::spec::default_spec(false)).unwrap();
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_NET_RAW".into());
    }
    let spec = spec.to_string();
    let bundle = p.tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), &spec).unwrap();
    let mut s = UnixStream::connect(&p.socket).unwrap();
    let mut create = |version: u32, source: serde_json::Value| {
        let mut fields = serde_json::json!({
            "config": config, "id": "c1", "runtime": "io.containerd.husk.v2", "hardened": false});
        fields
            .as_object_mut()
            .unwrap()
            .extend(source.as_object().unwrap().clone());
        let req = serde_json::json!({"version": version, "op": {"create": fields}});
        send_raw(&mut s, &frame(req.to_string().as_bytes()));
        read_reply(&mut s).expect("a reply")
    };

    let reply = create(2, serde_json::json!({ "bundle": bundle }));
    let created = &reply["created"];
    assert!(created.get("spec_json").is_none(), "{reply}");
    assert!(
        created["edits"].to_string().contains("CAP_NET_RAW"),
        "{reply}"
    );
    let written = std::fs::read(bundle.join("config.json")).unwrap();
    let edited = husk_runtime::spec::parse(&written).expect("the written spec parses");
    let bounding = edited
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    assert!(
        !bounding.is_empty(),
        "{}",
        String::from_utf8_lossy(&written)
    );
    assert!(
        !String::from_utf8_lossy(&written).contains("CAP_NET_RAW"),
        "the edit is not in config.json"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("husk-policy.json")).unwrap()).unwrap();
    assert!(
        record["edits"].to_string().contains("CAP_NET_RAW"),
        "{record}"
    );

    let reply = create(1, serde_json::json!({ "spec_json": spec }));
    let edited = reply["created"]["spec_json"]
        .as_str()
        .unwrap_or_else(|| panic!("no edited spec in a version 1 reply: {reply}"));
    assert!(!edited.contains("CAP_NET_RAW"), "{edited}");
    husk_runtime::spec::parse(edited.as_bytes()).expect("the edited spec parses");

    let reply = create(2, serde_json::json!({}));
    assert_eq!(reply["error"]["kind"], "bad_request", "{reply}");
    assert!(error_message(&reply).contains("its bundle"), "{reply}");
    let gone = p.tmp.path().join("no-bundle");
    let reply = create(2, serde_json::json!({ "bundle": gone }));
    assert_eq!(reply["error"]["kind"], "bundle", "{reply}");
    assert!(
        error_message(&reply).contains("no-bundle/config.json"),
        "{reply}"
    );
}

/// Connecting as another user: refused by the socket's mode, and, should
/// the mode be loosened, by the daemon's own check of the peer.
#[test]
fn only_root_can_use_the_socket() {
    require_root!();
    let p = Plugind::start(&[]);
    std::fs::set_permissions(p.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let connect_as_nobody = || {
        let script = "use IO::Socket::UNIX; \
            my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or do { print \"refused: $!\"; exit 0 }; \
            my $n = sysread($s, my $len, 4); \
            if (!$n) { print \"closed\"; exit 0 } \
            sysread($s, my $body, unpack('N', $len)); print $body;";
        let out = std::process::Command::new("/usr/bin/perl")
            .args(["-e", script])
            .arg(&p.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = connect_as_nobody();
    assert!(out.starts_with("refused: Permission denied"), "{out}");
    // Loosened by mistake: the daemon still refuses the peer.
    let dir = p.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&p.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = connect_as_nobody();
    assert!(out.contains("serves only uid 0"), "{out}");
    still_serves(&p);
}

#[test]
fn an_idle_daemon_exits_and_removes_its_socket() {
    require_root!();
    let mut p = Plugind::start(&["--idle-timeout", "1"]);
    still_serves(&p);
    let t = Instant::now();
    let status = husk_tests::command::wait_timeout(&mut p.child, Duration::from_secs(10))
        .expect("an idle husk-plugind exits");
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(!p.socket.exists(), "the socket is left behind");
    assert!(p.log().contains("idle timeout"), "{}", p.log());
}

#[test]
fn a_second_daemon_on_a_served_socket_refuses_to_start() {
    require_root!();
    let p = Plugind::start(&[]);
    let out = std::process::Command::new(plugind::binary())
        .arg("--socket")
        .arg(&p.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serves"), "{err}");
    still_serves(&p);
}
