//! Bad input gets a clear error (exit code 125, a message that names the
//! problem) and changes nothing.

mod core_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use core_common::{Huskd, IMAGE};
use husk_tests::require_root;

fn fails_with(d: &Huskd, args: &[&str], needles: &[&str]) {
    let out = d.husk(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "husk {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "husk {args:?}: {err:?} lacks {n:?}");
    }
}

fn no_containers(d: &Huskd) {
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    let bundles: Vec<_> = std::fs::read_dir(d.state.join("bundles"))
        .unwrap()
        .collect();
    assert!(bundles.is_empty(), "{bundles:?}");
}

#[test]
fn unknown_image_is_refused() {
    require_root!();
    let d = Huskd::start();
    fails_with(
        &d,
        &["run", "no/such:image", "true"],
        &["no image named", "no/such:image"],
    );
    fails_with(
        &d,
        &["image", "inspect", "no/such:image"],
        &["no image named"],
    );
    fails_with(&d, &["rmi", "no/such:image"], &["no image named"]);
    no_containers(&d);
}

#[test]
fn unknown_container_is_refused() {
    require_root!();
    let d = Huskd::start();
    for cmd in [
        ["stop", "nosuch"],
        ["rm", "nosuch"],
        ["logs", "nosuch"],
        ["inspect", "nosuch"],
        ["wait", "nosuch"],
    ] {
        fails_with(&d, &cmd, &["no container \"nosuch\""]);
    }
}

#[test]
fn malformed_volume_specs_are_refused() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    for (v, why) in [
        ("/tmp", "no destination"),
        ("/tmp:relative", "not an absolute path"),
        ("/tmp:/x:rx", "unknown mode"),
        ("/does/not/exist/husk:/x", "does not exist"),
        (
            "bad name!:/x",
            "neither an absolute path nor a valid volume name",
        ),
    ] {
        fails_with(
            &d,
            &["run", "-v", v, IMAGE, "true"],
            &["invalid volume spec", why],
        );
    }
    no_containers(&d);
}

#[test]
fn a_name_in_use_is_refused() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let name = husk_tests::unique_id("dup");
    let id = d
        .husk_ok(&["create", "--name", &name, IMAGE, "true"])
        .trim()
        .to_string();
    fails_with(
        &d,
        &["run", "--name", &name, IMAGE, "true"],
        &["already used", &name],
    );
    assert_eq!(d.status(&id), "created");
    d.husk_ok(&["rm", "-f", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn a_missing_shim_binary_names_the_runtime_and_the_fix() {
    require_root!();
    let d = Huskd::start_with(&["--runtime", "ghost=containerd-shim-ghost-v2"]);
    d.import_busybox();
    fails_with(
        &d,
        &["run", "--runtime", "ghost", IMAGE, "true"],
        &["runtime \"ghost\" is missing", "containerd-shim-ghost-v2"],
    );
    fails_with(
        &d,
        &[
            "run",
            "--runtime",
            "/nonexistent/containerd-shim-x-v2",
            IMAGE,
            "true",
        ],
        &["does not exist"],
    );
    fails_with(
        &d,
        &["run", "--runtime", "nosuch", IMAGE, "true"],
        &["unknown runtime", "native", "runc"],
    );
    no_containers(&d);
}

#[test]
fn the_socket_is_root_only() {
    require_root!();
    let d = Huskd::start();
    let md = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(md.uid(), 0);
    // As nobody: the husk binary runs, the connection is refused with a hint.
    let dir = tempfile::Builder::new()
        .prefix("husk-nobody-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("husk");
    std::fs::copy(core_common::bin_dir().join("husk"), &bin).unwrap();
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--socket")
        .arg(&d.socket)
        .arg("ps")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("root-only"),
        "{err}"
    );
}

#[test]
fn an_unknown_api_version_is_refused() {
    require_root!();
    let d = Huskd::start();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"api\":99,\"method\":\"version\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["kind"], "bad_request");
    assert!(v["message"].as_str().unwrap().contains("version 1"), "{v}");
}
