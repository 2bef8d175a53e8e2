//! Unit tests of the unpacker: content, metadata, whiteouts, and every
//! hostile entry refused without writing outside the target.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::images::testutil::{tar_of, E};

struct Scene {
    _t: tempfile::TempDir,
    target: PathBuf,
    outside: PathBuf,
}

/// A target dir next to an `outside` dir holding `secret`: hostile layers
/// aim at `outside`.
fn scene() -> Scene {
    let t = tempfile::Builder::new()
        .prefix("husk-unpack-")
        .tempdir()
        .unwrap();
    let target = t.path().join("a/b/target");
    let outside = t.path().join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"host data").unwrap();
    Scene {
        target,
        outside,
        _t: t,
    }
}

fn apply() -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    }
}

fn run(target: &Path, entries: &[E], opts: &UnpackOptions) -> Result<UnpackStats> {
    unpack(&tar_of(entries)[..], target, opts)
}

/// Asserts the layer is refused as unsafe, naming `entry`, and that the
/// outside dir is untouched.
fn refused(s: &Scene, entries: &[E], entry: &str, why: &str) {
    let e = run(&s.target, entries, &apply()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::UnsafeEntry { .. }), "{msg}");
    assert!(
        msg.contains(&format!("{entry:?}")),
        "{msg} does not name {entry:?}"
    );
    assert!(msg.contains(why), "{msg} does not say {why:?}");
    let mut names: Vec<_> = fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"], "something was written outside");
    assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"host data");
}

#[test]
fn unpacks_files_dirs_links_and_metadata() {
    let s = scene();
    let stats = run(
        &s.target,
        &[
            E::dir("./"),
            E::dir("bin"),
            E::file("bin/busybox", b"ELF").mode(0o4755),
            E::symlink("bin/sh", "busybox"),
            E::symlink("bin/abs", "/bin/busybox"),
            E::hardlink("bin/ls", "bin/busybox"),
            E::file("etc/deep/motd", b"hi"), // parents created implicitly
            E::fifo("run.fifo"),
            E::dir("tmp").mode(0o1777),
        ],
        &apply(),
    )
    .unwrap();
    assert_eq!(stats.entries, 9);
    assert_eq!(stats.bytes, 5);
    let t = &s.target;
    assert_eq!(fs::read(t.join("bin/busybox")).unwrap(), b"ELF");
    let m = fs::metadata(t.join("bin/busybox")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(m.nlink(), 2);
    assert_eq!(fs::metadata(t.join("bin/ls")).unwrap().ino(), m.ino());
    assert_eq!(
        fs::read_link(t.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    // Absolute symlink targets are kept verbatim (resolved in the container).
    assert_eq!(
        fs::read_link(t.join("bin/abs")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(fs::read(t.join("etc/deep/motd")).unwrap(), b"hi");
    assert!(fs::symlink_metadata(t.join("run.fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let tmp = fs::metadata(t.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    // Directory mtimes are set after their children were written.
    assert_eq!(fs::metadata(t.join("bin")).unwrap().mtime(), 1_600_000_000);
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = scene();
    run(
        &s.target,
        &[
            E::file("x", b"file"),
            E::dir("x"),
            E::file("x/inner", b"1"),
            E::dir("y"),
            E::file("y/z", b"z"),
            E::file("y", b"now a file"),
            E::file("f", b"old"),
            E::file("f", b"new"),
        ],
        &apply(),
    )
    .unwrap();
    assert_eq!(fs::read(s.target.join("x/inner")).unwrap(), b"1");
    assert_eq!(fs::read(s.target.join("y")).unwrap(), b"now a file");
    assert_eq!(fs::read(s.target.join("f")).unwrap(), b"new");
}

#[test]
fn refuses_dotdot() {
    let s = scene();
    refused(
        &s,
        &[E::file("../../../outside/evil", b"x")],
        "../../../outside/evil",
        "`..`",
    );
    refused(
        &s,
        &[E::file("etc/../../../../outside/evil", b"x")],
        "etc/../../../../outside/evil",
        "`..`",
    );
}

#[test]
fn refuses_absolute_paths() {
    let s = scene();
    let abs = format!("{}/evil", s.outside.display());
    refused(&s, &[E::file(&abs, b"x")], &abs, "absolute path");
    refused(
        &s,
        &[E::dir(&format!("{}/d", s.outside.display()))],
        &format!("{}/d", s.outside.display()),
        "absolute path",
    );
}

#[test]
fn never_writes_through_a_symlink_in_the_tree() {
    let s = scene();
    let out = s.outside.display().to_string();
    // A symlink to / (or to the outside dir), then a file under it.
    refused(
        &s,
        &[
            E::symlink("root", "/"),
            E::file(&format!("root{out}/evil"), b"x"),
        ],
        &format!("root{out}/evil"),
        "a symlink already in the layer",
    );
    let s = scene();
    refused(
        &s,
        &[E::symlink("out", &out), E::file("out/evil", b"x")],
        "out/evil",
        "a symlink already in the layer",
    );
    // Relative climb, a directory entry, a symlink over the file itself.
    let s = scene();
    refused(
        &s,
        &[E::symlink("up", "../../../outside"), E::dir("up/d")],
        "up/d",
        "symlink",
    );
    let s = scene();
    refused(
        &s,
        &[E::symlink("out", &out), E::symlink("out/secret", "/x")],
        "out/secret",
        "symlink",
    );
    // Deeper: the symlink is a middle component.
    let s = scene();
    refused(
        &s,
        &[
            E::dir("a"),
            E::symlink("a/b", &out),
            E::file("a/b/c/d", b"x"),
        ],
        "a/b/c/d",
        "\"a/b\"",
    );
}

#[test]
fn a_file_entry_replaces_a_symlink_instead_of_following_it() {
    let s = scene();
    let target = s.outside.join("secret").display().to_string();
    run(
        &s.target,
        &[E::symlink("f", &target), E::file("f", b"mine")],
        &apply(),
    )
    .unwrap();
    assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"host data");
    assert!(fs::symlink_metadata(s.target.join("f")).unwrap().is_file());
}

#[test]
fn refuses_hardlinks_outside() {
    let s = scene();
    let abs = s.outside.join("secret").display().to_string();
    refused(
        &s,
        &[E::hardlink("h", &abs)],
        "h",
        "a path outside the layer",
    );
    let s = scene();
    refused(
        &s,
        &[E::hardlink("h", "../../../outside/secret")],
        "h",
        "a path outside the layer",
    );
    // Through a symlink in the tree.
    let s = scene();
    let out = s.outside.display().to_string();
    refused(
        &s,
        &[E::symlink("l", &out), E::hardlink("h", "l/secret")],
        "h",
        "a symlink already in the layer",
    );
    // To a host file by a path that exists on the host but not in the layer.
    let s = scene();
    refused(
        &s,
        &[E::hardlink("passwd", "etc/passwd")],
        "passwd",
        "not in this layer",
    );
    assert!(!s.target.join("passwd").exists());
}

#[test]
fn refuses_device_nodes_by_default() {
    let s = scene();
    refused(
        &s,
        &[E::chardev("dev/mem", 1, 1)],
        "dev/mem",
        "device nodes in image layers are refused",
    );
    let mut blk = E::chardev("dev/sda", 8, 0);
    blk.kind = tar::EntryType::Block;
    refused(&s, &[blk], "dev/sda", "block device");
}

#[test]
fn creates_device_nodes_when_allowed_and_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: creating device nodes needs root");
        return;
    }
    let s = scene();
    let opts = UnpackOptions {
        devices: DevicePolicy::Create,
        ..apply()
    };
    run(&s.target, &[E::chardev("dev/null", 1, 3)], &opts).unwrap();
    let m = fs::symlink_metadata(s.target.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn whiteouts_applied_remove_lower_content() {
    let s = scene();
    run(
        &s.target,
        &[
            E::file("etc/a", b"a"),
            E::file("etc/b", b"b"),
            E::file("opq/old1", b"1"),
            E::dir("opq/olddir"),
            E::file("opq/olddir/x", b"x"),
            E::dir("gone"),
            E::file("gone/y", b"y"),
        ],
        &apply(),
    )
    .unwrap();
    run(
        &s.target,
        &[
            E::file("etc/.wh.a", b""),
            E::file(".wh.gone", b""),
            E::file("opq/new-before", b"n"),
            E::file("opq/.wh..wh..opq", b""),
            E::file("opq/new-after", b"n"),
            E::file(".wh.never-existed", b""),
            E::file(".wh..wh.plnk", b""),
        ],
        &apply(),
    )
    .unwrap();
    let t = &s.target;
    assert!(!t.join("etc/a").exists());
    assert!(t.join("etc/b").exists());
    assert!(!t.join("gone").exists());
    let mut opq: Vec<_> = fs::read_dir(t.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new-after", "new-before"]);
    assert!(!t.join(".wh.never-existed").exists());
}

#[test]
fn whiteouts_cannot_name_the_parent() {
    let s = scene();
    refused(&s, &[E::file("a/.wh...", b"")], "a/.wh...", "whiteout");
    refused(&s, &[E::file(".wh..", b"")], ".wh..", "whiteout");
}

#[test]
fn whiteouts_through_symlinks_are_refused() {
    let s = scene();
    let out = s.outside.display().to_string();
    refused(
        &s,
        &[E::symlink("l", &out), E::file("l/.wh.secret", b"")],
        "l/.wh.secret",
        "symlink",
    );
    let s = scene();
    refused(
        &s,
        &[E::symlink("l", &out), E::file("l/.wh..wh..opq", b"")],
        "l/.wh..wh..opq",
        "symlink",
    );
}

#[test]
fn whiteouts_in_overlay_format() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: overlay whiteouts need root (mknod, trusted.* xattrs)");
        return;
    }
    let s = scene();
    run(
        &s.target,
        &[
            E::dir("etc"),
            E::file("etc/.wh.passwd", b""),
            E::dir("opq"),
            E::file("opq/.wh..wh..opq", b""),
            E::file("opq/kept", b"k"),
        ],
        &UnpackOptions::default(),
    )
    .unwrap();
    let w = fs::symlink_metadata(s.target.join("etc/passwd")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert_eq!(
        xattr::get(s.target.join("opq"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(s.target.join("opq/kept").exists());
    assert!(!s.target.join("etc/.wh.passwd").exists());
}

#[test]
fn clean_path_rules() {
    let c = |p: &str| clean_path(p.as_bytes()).map(|v| display(&v));
    assert_eq!(c("./a//b/./c/").unwrap(), "a/b/c");
    assert_eq!(c("./").unwrap(), "");
    assert!(c("/etc").is_err());
    assert!(c("a/../b").is_err());
    assert!(c("..").is_err());
    assert!(c("").is_err());
    assert_eq!(c("a/..b/c..").unwrap(), "a/..b/c..");
}
