//! A busybox root filesystem built from Debian's busybox-static.
//!
//! Layout: `/bin/busybox` plus one symlink `/bin/<applet> -> busybox` for every
//! applet `busybox --list` names; the standard directories; `/etc/passwd` and
//! `/etc/group` with `root` (0), `husk` (1000) and `nobody` (65534);
//! `/home/husk` owned by 1000:1000 (when built as root).
//!
//! One rootfs is built per test process (in `$TMPDIR/husk-test-busybox-<pid>`,
//! removed when the process exits) and really copied into each bundle with
//! [`install_rootfs`], so a test may write to its copy.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::command;

/// Where Debian's busybox-static installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";
/// Environment variable naming another static busybox to use.
pub const BUSYBOX_ENV: &str = "HUSK_TEST_BUSYBOX";
/// Uid and gid of the `husk` user in the rootfs.
pub const HUSK_UID: u32 = 1000;
/// Uid and gid of `nobody` in the rootfs.
pub const NOBODY_UID: u32 = 65534;

/// `/etc/passwd` of the rootfs.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
husk:x:1000:1000:husk:/home/husk:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// `/etc/group` of the rootfs.
pub const GROUP: &str = "root:x:0:\nhusk:x:1000:\nnobody:x:65534:\n";

const CACHE_PREFIX: &str = "husk-test-busybox-";

static CACHE: OnceLock<PathBuf> = OnceLock::new();

/// The static busybox binary the rootfs is built from: `$HUSK_TEST_BUSYBOX`
/// or `/bin/busybox`. Panics with install instructions if it is missing or
/// dynamically linked (a dynamic busybox cannot run in a rootfs without libc).
pub fn host_busybox() -> PathBuf {
    let path = std::env::var_os(BUSYBOX_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(HOST_BUSYBOX));
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. The tests build their rootfs from Debian's busybox-static: \
             run scripts/install-deps.sh",
            path.display()
        )
    });
    match elf_interpreter(&bytes) {
        Ok(None) => path,
        Ok(Some(interp)) => panic!(
            "{} is dynamically linked (interpreter {interp}); the tests need a static busybox: \
             apt-get install busybox-static (scripts/install-deps.sh does)",
            path.display()
        ),
        Err(e) => panic!("{} is not a usable ELF executable: {e}", path.display()),
    }
}

/// The applets `busybox --list` names (without `busybox` itself).
pub fn applets(busybox: &Path) -> Vec<String> {
    let out = command::output_ok(Command::new(busybox).arg("--list"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect()
}

/// Builds a fresh busybox rootfs at `dest` (which must not exist yet).
pub fn build_rootfs(dest: &Path) -> io::Result<()> {
    let busybox = host_busybox();
    let applets = applets(&busybox);
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "etc",
        "run",
        "var",
        "home/husk",
    ] {
        dirs.create(dest.join(d))?;
    }
    for (d, mode) in [("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)] {
        dirs.create(dest.join(d))?;
        fs::set_permissions(dest.join(d), fs::Permissions::from_mode(mode))?;
    }
    let bin = dest.join("bin/busybox");
    fs::copy(&busybox, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    for applet in &applets {
        symlink("busybox", dest.join("bin").join(applet))?;
    }
    fs::write(dest.join("etc/passwd"), PASSWD)?;
    fs::write(dest.join("etc/group"), GROUP)?;
    fs::write(dest.join("etc/hostname"), "husk\n")?;
    fs::write(
        dest.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    )?;
    if crate::host::is_root() {
        std::os::unix::fs::chown(dest.join("home/husk"), Some(HUSK_UID), Some(HUSK_UID))?;
    }
    Ok(())
}

/// The rootfs shared by this process's tests, built on first use. Do not
/// write to it: copy it with [`install_rootfs`].
pub fn cached_rootfs() -> &'static Path {
    CACHE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("{CACHE_PREFIX}{}", std::process::id()));
        remove_stale_caches();
        if dir.exists() {
            // Left by an earlier process with the same pid.
            fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("removing stale {}: {e}", dir.display()));
        }
        let tmp = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        build_rootfs(&tmp)
            .and_then(|()| fs::rename(&tmp, &dir))
            .unwrap_or_else(|e| {
                let _ = fs::remove_dir_all(&tmp);
                panic!("building the busybox rootfs in {}: {e}", dir.display())
            });
        // SAFETY: registers a plain `extern "C" fn` with no preconditions.
        unsafe {
            libc::atexit(remove_cache_at_exit);
        }
        dir
    })
}

/// Copies the cached busybox rootfs to `dest` (created; it must not exist or
/// be an empty directory). A real copy: the container may write to it.
pub fn install_rootfs(dest: &Path) {
    let src = cached_rootfs();
    copy_tree(src, dest).unwrap_or_else(|e| {
        panic!(
            "copying the busybox rootfs {} to {}: {e}",
            src.display(),
            dest.display()
        )
    });
}

/// Copies the directory tree `src` to `dst`: directories, regular files and
/// symlinks (not followed), keeping permission bits and, when running as root,
/// ownership. Other file types are an error.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let root = crate::host::is_root();
    copy_entry(src, dst, root)
}

fn copy_entry(src: &Path, dst: &Path, keep_owner: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        match fs::create_dir(dst) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dst.is_dir() => {}
            other => other?,
        }
        let mut entries: Vec<_> = fs::read_dir(src)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_entry(&e.path(), &dst.join(e.file_name()), keep_owner)?;
        }
        fs::set_permissions(dst, meta.permissions())?;
    } else if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        fs::copy(src, dst)?;
        fs::set_permissions(dst, meta.permissions())?;
    } else {
        return Err(io::Error::other(format!(
            "{}: cannot copy this file type",
            src.display()
        )));
    }
    if keep_owner {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

extern "C" fn remove_cache_at_exit() {
    if let Some(dir) = CACHE.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Removes caches of processes that no longer exist (killed before their
/// `atexit` handler ran).
fn remove_stale_caches() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(CACHE_PREFIX)) else {
            continue;
        };
        let pid = rest.strip_suffix(".partial").unwrap_or(rest);
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The program interpreter (`PT_INTERP`) an ELF executable asks for, `None`
/// for a static executable.
pub fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    if bytes.len() < 0x40 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    let is64 = match bytes[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    if bytes[5] != 1 {
        return Err("not little-endian".into());
    }
    let u16_at = |o: usize| -> Result<usize, String> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| "truncated".to_string())
    };
    let u32_at = |o: usize| -> Result<usize, String> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "truncated".to_string())
    };
    let u64_at = |o: usize| -> Result<usize, String> {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| "truncated".to_string())
    };
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?)
    } else {
        (u32_at(0x1c)?, u16_at(0x2a)?, u16_at(0x2c)?)
    };
    const PT_INTERP: usize = 3;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let (off, size) = if is64 {
            (u64_at(ph + 8)?, u64_at(ph + 32)?)
        } else {
            (u32_at(ph + 4)?, u32_at(ph + 16)?)
        };
        let raw = bytes.get(off..off + size).ok_or("truncated PT_INTERP")?;
        let interp = String::from_utf8_lossy(raw);
        return Ok(Some(interp.trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binary_is_dynamic() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).unwrap();
        assert!(
            interp.as_deref().is_some_and(|i| i.contains("ld-")),
            "{interp:?}"
        );
    }

    #[test]
    fn rejects_non_elf() {
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(&[0u8; 100]).is_err());
    }

    #[test]
    fn copy_tree_keeps_links_and_modes() {
        let t = tempfile::Builder::new()
            .prefix("husk-copy-")
            .tempdir()
            .unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), "x").unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("d/f", src.join("l")).unwrap();
        symlink("/nonexistent", src.join("dangling")).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("d/f")).unwrap(), "x");
        assert_eq!(
            fs::metadata(dst.join("d/f")).unwrap().permissions().mode() & 0o7777,
            0o751
        );
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), PathBuf::from("d/f"));
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            PathBuf::from("/nonexistent")
        );
    }
}
