//! Unpacking a layer tar onto a directory without ever leaving it.
//!
//! Every entry's path is cleaned first: an absolute path or a `..`
//! component is refused. Then the entry's parent is reached from the
//! target's directory fd one component at a time with
//! `openat(O_DIRECTORY|O_NOFOLLOW)`, so a symlink already in the tree is
//! never followed (it gives `ELOOP`, reported as an error naming the
//! entry and the symlink). Files are created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to that parent fd, links with
//! `symlinkat`/`linkat` (never `AT_SYMLINK_FOLLOW`), and a hardlink's target
//! is reached the same way, so it can only name something already inside
//! the target. Symlink *targets* are stored verbatim: they are resolved
//! inside the container's root at run time, never here.
//!
//! Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are either
//! converted to overlayfs's format ([`WhiteoutMode::Overlay`]: a 0/0
//! character device, the `trusted.overlay.opaque=y` xattr; needs root), for
//! snapshots stacked by overlayfs, or applied ([`WhiteoutMode::Apply`]:
//! the named file, or the directory's earlier content, is removed), for
//! flattening layers onto one directory.
//!
//! The caller unpacks into a fresh directory and removes it on error (see
//! `snapshots`), so a refused layer leaves nothing behind.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::error::{ImageError, IoContext, Result};

/// How whiteouts and opaque markers are handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Convert them to overlayfs's format (snapshots; needs root).
    #[default]
    Overlay,
    /// Apply them: remove what they hide from the target (flattening).
    Apply,
}

/// What to do with character and block device entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Refuse the layer: a device node in an image would hand the
    /// container a host device (the default).
    #[default]
    Refuse,
    /// Create them (as root; skipped with a warning otherwise).
    Create,
}

/// How to unpack.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    pub devices: DevicePolicy,
    /// Give files the tar's uid/gid (default: when running as root).
    pub same_owner: bool,
    /// Restore `SCHILY.xattr.*` extended attributes (default: true).
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: WhiteoutMode::Overlay,
            devices: DevicePolicy::Refuse,
            same_owner: Uid::effective().is_root(),
            xattrs: true,
        }
    }
}

/// What an unpack wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the (uncompressed) tar stream `reader` onto the existing
/// directory `target`. See the module docs for what is refused.
pub fn unpack(reader: impl Read, target: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let root: OwnedFd = File::open(target)
        .ctx(|| format!("opening unpack target {}", target.display()))?
        .into();
    let mut u = Unpacker {
        root,
        opts: opts.clone(),
        is_root: Uid::effective().is_root(),
        written: HashSet::new(),
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .ctx(|| "reading the layer tar".to_string())?;
    for entry in entries {
        let mut entry = entry.ctx(|| "reading the layer tar".to_string())?;
        u.entry(&mut entry)?;
        u.stats.entries += 1;
    }
    u.finish()?;
    Ok(u.stats)
}

struct Unpacker {
    root: OwnedFd,
    opts: UnpackOptions,
    is_root: bool,
    /// Paths this layer created (for opaque dirs in `Apply` mode).
    written: HashSet<Vec<u8>>,
    /// Directories whose mtime is set at the end (children change it).
    dir_times: Vec<(Vec<OsString>, i64)>,
    stats: UnpackStats,
}

/// An entry's path split into cleaned components; refuses absolute paths
/// and `..`.
pub fn clean_path(raw: &[u8]) -> std::result::Result<Vec<OsString>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw[0] == b'/' {
        return Err("absolute path: entries must be relative to the layer root".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err("`..` component: the entry would escape the layer root".into());
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn display(comps: &[OsString]) -> String {
    let v: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    v.join("/")
}

fn mode_of(h: &tar::Header) -> Mode {
    Mode::from_bits_truncate(h.mode().unwrap_or(0o644) & 0o7777)
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = clean_path(&raw).map_err(|r| ImageError::unsafe_entry(&name, r))?;
        let Some((last, parents)) = comps.split_last() else {
            // The layer root itself (`./`): take a directory's metadata.
            if kind.is_dir() {
                self.dir_meta(self.root.as_fd(), entry, &name)?;
                self.dir_times.push((Vec::new(), mtime(entry.header())));
                return Ok(());
            }
            return Err(ImageError::unsafe_entry(
                &name,
                "a non-directory entry for the layer root",
            ));
        };
        let last_bytes = last.as_bytes();
        if last_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&name, parents, last_bytes);
        }
        let parent = self.walk(parents, &name, true)?;
        let p = parent.as_fd();
        let h = entry.header().clone();
        match kind {
            tar::EntryType::Directory => {
                match stat_at(p, last) {
                    Some(st) if is_dir(st.st_mode) => {}
                    Some(_) => remove_at(p, last, &name)?,
                    None => {}
                }
                if stat_at(p, last).is_none() {
                    mkdirat(p, last.as_os_str(), Mode::from_bits_truncate(0o700))
                        .ctx(|| format!("layer entry {name:?}: mkdir"))?;
                }
                let dir = open_dir_at(p, last)
                    .map_err(|e| self.walk_error(e, &name, &comps, comps.len()))?;
                self.dir_meta(dir.as_fd(), entry, &name)?;
                self.dir_times.push((comps.clone(), mtime(&h)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(p, last, &name)?;
                let fd = openat(
                    p,
                    last.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .ctx(|| format!("layer entry {name:?}: creating the file"))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file)
                    .ctx(|| format!("layer entry {name:?}: writing the file"))?;
                self.stats.bytes += n;
                self.owner_fd(file.as_fd(), &h, &name)?;
                fchmod(file.as_fd(), mode_of(&h)).ctx(|| format!("layer entry {name:?}: chmod"))?;
                self.xattrs_fd(&file, entry, &name)?;
                let t = TimeSpec::new(mtime(&h), 0);
                futimens(file.as_fd(), &t, &t).ctx(|| format!("layer entry {name:?}: utimens"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::unsafe_entry(&name, "a symlink without a target"))?
                    .into_owned();
                if target.is_empty() {
                    return Err(ImageError::unsafe_entry(
                        &name,
                        "a symlink without a target",
                    ));
                }
                self.clear(p, last, &name)?;
                symlinkat(OsStr::from_bytes(&target), p, last.as_os_str())
                    .ctx(|| format!("layer entry {name:?}: symlink"))?;
                self.owner_at(p, last, &h, &name)?;
                let t = TimeSpec::new(mtime(&h), 0);
                utimensat(p, last.as_os_str(), &t, &t, UtimensatFlags::NoFollowSymlink)
                    .ctx(|| format!("layer entry {name:?}: utimens"))?;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::unsafe_entry(&name, "a hardlink without a target"))?
                    .into_owned();
                let tname = String::from_utf8_lossy(&raw_target).into_owned();
                let tcomps = clean_path(&raw_target).map_err(|r| {
                    ImageError::unsafe_entry(
                        &name,
                        format!("hardlink to {tname:?}, a path outside the layer ({r})"),
                    )
                })?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(ImageError::unsafe_entry(
                        &name,
                        "hardlink to the layer root",
                    ));
                };
                let tparent = self.walk(tparents, &name, false)?;
                let Some(tst) = stat_at(tparent.as_fd(), tlast) else {
                    return Err(ImageError::unsafe_entry(
                        &name,
                        format!("hardlink to {tname:?}, which is not in this layer"),
                    ));
                };
                if is_dir(tst.st_mode) {
                    return Err(ImageError::unsafe_entry(
                        &name,
                        format!("hardlink to the directory {tname:?}"),
                    ));
                }
                if tcomps == comps {
                    return Ok(());
                }
                self.clear(p, last, &name)?;
                linkat(
                    tparent.as_fd(),
                    tlast.as_os_str(),
                    p,
                    last.as_os_str(),
                    AtFlags::empty(),
                )
                .ctx(|| format!("layer entry {name:?}: hardlink to {tname:?}"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (flag, what) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, "character device"),
                    tar::EntryType::Block => (SFlag::S_IFBLK, "block device"),
                    _ => (SFlag::S_IFIFO, "fifo"),
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if flag != SFlag::S_IFIFO {
                    if self.opts.devices == DevicePolicy::Refuse {
                        return Err(ImageError::unsafe_entry(
                            &name,
                            format!(
                                "a {what} ({major}:{minor}); device nodes in image layers are \
                                 refused because they would give the container a host device"
                            ),
                        ));
                    }
                    if !self.is_root {
                        tracing::warn!(entry = %name, "skipping {what}: creating it needs root");
                        return Ok(());
                    }
                }
                self.clear(p, last, &name)?;
                mknodat(
                    p,
                    last.as_os_str(),
                    flag,
                    mode_of(&h),
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
                .ctx(|| format!("layer entry {name:?}: mknod"))?;
                self.owner_at(p, last, &h, &name)?;
                fchmodat(
                    p,
                    last.as_os_str(),
                    mode_of(&h),
                    FchmodatFlags::NoFollowSymlink,
                )
                .or_else(|e| {
                    if e == Errno::EOPNOTSUPP {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .ctx(|| format!("layer entry {name:?}: chmod"))?;
                let t = TimeSpec::new(mtime(&h), 0);
                utimensat(p, last.as_os_str(), &t, &t, UtimensatFlags::NoFollowSymlink)
                    .ctx(|| format!("layer entry {name:?}: utimens"))?;
            }
            other => {
                return Err(ImageError::unsafe_entry(
                    &name,
                    format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
        self.written.insert(comps_key(&comps));
        Ok(())
    }

    /// `.wh.NAME` and `.wh..wh..opq`.
    fn whiteout(&mut self, name: &str, parents: &[OsString], last: &[u8]) -> Result<()> {
        let parent = self.walk(parents, name, true)?;
        let p = parent.as_fd();
        if last == OPAQUE.as_bytes() {
            match self.opts.whiteouts {
                WhiteoutMode::Overlay => {
                    let dir = File::from(
                        p.try_clone_to_owned()
                            .ctx(|| format!("layer entry {name:?}: dup"))?,
                    );
                    xattr::FileExt::set_xattr(&dir, OVERLAY_OPAQUE_XATTR, b"y").ctx(|| {
                        format!(
                            "layer entry {name:?}: marking the directory opaque \
                             ({OVERLAY_OPAQUE_XATTR}, which needs root)"
                        )
                    })?;
                }
                WhiteoutMode::Apply => {
                    // Remove what lower layers put here; keep this layer's.
                    let dir = nix::dir::Dir::from_fd(
                        p.try_clone_to_owned()
                            .ctx(|| format!("layer entry {name:?}: dup"))?,
                    )
                    .ctx(|| format!("layer entry {name:?}: reading the directory"))?;
                    let mut doomed = Vec::new();
                    let mut dir = dir;
                    for e in dir.iter() {
                        let e = e.ctx(|| format!("layer entry {name:?}: reading the directory"))?;
                        let n = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
                        if n == "." || n == ".." {
                            continue;
                        }
                        let mut full = parents.to_vec();
                        full.push(n.clone());
                        if !self.written.contains(&comps_key(&full)) {
                            doomed.push(n);
                        }
                    }
                    for n in doomed {
                        remove_at(p, &n, name)?;
                    }
                }
            }
            return Ok(());
        }
        if last.starts_with(b".wh..wh.") {
            // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(ImageError::unsafe_entry(
                name,
                "a whiteout of no valid name",
            ));
        }
        let hidden = OsStr::from_bytes(hidden);
        match self.opts.whiteouts {
            WhiteoutMode::Apply => {
                if stat_at(p, hidden).is_some() {
                    remove_at(p, hidden, name)?;
                }
            }
            WhiteoutMode::Overlay => {
                if stat_at(p, hidden).is_some() {
                    remove_at(p, hidden, name)?;
                }
                mknodat(p, hidden, SFlag::S_IFCHR, Mode::empty(), 0).ctx(|| {
                    format!(
                        "layer entry {name:?}: creating the overlay whiteout (a 0/0 character \
                         device, which needs root)"
                    )
                })?;
                let mut full = parents.to_vec();
                full.push(hidden.to_os_string());
                self.written.insert(comps_key(&full));
            }
        }
        Ok(())
    }

    /// Opens the directory `comps` under the root, one component at a time,
    /// never following a symlink; creates missing directories if `create`.
    fn walk(&self, comps: &[OsString], entry: &str, create: bool) -> Result<OwnedFd> {
        let mut cur = self
            .root
            .try_clone()
            .ctx(|| format!("layer entry {entry:?}: dup"))?;
        for (i, c) in comps.iter().enumerate() {
            let next = match open_dir_at(cur.as_fd(), c) {
                Err(Errno::ENOENT) if create => {
                    mkdirat(cur.as_fd(), c.as_os_str(), Mode::from_bits_truncate(0o755)).ctx(
                        || format!("layer entry {entry:?}: mkdir {}", display(&comps[..=i])),
                    )?;
                    open_dir_at(cur.as_fd(), c)
                }
                r => r,
            };
            let next = next.map_err(|e| match e {
                // O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR or ELOOP.
                Errno::ENOTDIR | Errno::ELOOP
                    if stat_at(cur.as_fd(), c).is_some_and(|st| is_symlink(st.st_mode)) =>
                {
                    Errno::ELOOP
                }
                e => e,
            });
            cur = next.map_err(|e| self.walk_error(e, entry, comps, i + 1))?;
        }
        Ok(cur)
    }

    fn walk_error(&self, e: Errno, entry: &str, comps: &[OsString], upto: usize) -> ImageError {
        let prefix = display(&comps[..upto]);
        match e {
            Errno::ELOOP => ImageError::unsafe_entry(
                entry,
                format!(
                    "its path goes through {prefix:?}, a symlink already in the layer; the \
                     unpacker never follows symlinks (they could point outside)"
                ),
            ),
            Errno::ENOTDIR => ImageError::unsafe_entry(
                entry,
                format!("its path goes through {prefix:?}, which is not a directory"),
            ),
            Errno::ENOENT => {
                ImageError::unsafe_entry(entry, format!("{prefix:?} is not in this layer"))
            }
            e => ImageError::io(
                format!("layer entry {entry:?}: opening {prefix:?}"),
                io::Error::from(e),
            ),
        }
    }

    /// Removes whatever non-directory (or directory) sits at `name` before
    /// a non-directory entry is written there.
    fn clear(&self, p: BorrowedFd<'_>, name: &OsStr, entry: &str) -> Result<()> {
        if stat_at(p, name).is_some() {
            remove_at(p, name, entry)?;
        }
        Ok(())
    }

    fn dir_meta<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        entry: &mut tar::Entry<R>,
        name: &str,
    ) -> Result<()> {
        let h = entry.header().clone();
        self.owner_fd(dir, &h, name)?;
        fchmod(dir, mode_of(&h)).ctx(|| format!("layer entry {name:?}: chmod"))?;
        let f = File::from(
            dir.try_clone_to_owned()
                .ctx(|| format!("layer entry {name:?}: dup"))?,
        );
        self.xattrs_fd(&f, entry, name)
    }

    fn owner_fd(&self, fd: BorrowedFd<'_>, h: &tar::Header, name: &str) -> Result<()> {
        if !self.opts.same_owner {
            return Ok(());
        }
        let (uid, gid) = owner(h);
        fchown(fd, Some(uid), Some(gid)).ctx(|| format!("layer entry {name:?}: chown"))
    }

    fn owner_at(&self, p: BorrowedFd<'_>, n: &OsStr, h: &tar::Header, name: &str) -> Result<()> {
        if !self.opts.same_owner {
            return Ok(());
        }
        let (uid, gid) = owner(h);
        fchownat(p, n, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
            .ctx(|| format!("layer entry {name:?}: chown"))
    }

    fn xattrs_fd<R: Read>(&self, f: &File, entry: &mut tar::Entry<R>, name: &str) -> Result<()> {
        if !self.opts.xattrs {
            return Ok(());
        }
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.ctx(|| format!("layer entry {name:?}: reading pax headers"))?;
            let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            let key = OsStr::from_bytes(key);
            if let Err(e) = xattr::FileExt::set_xattr(f, key, ext.value_bytes()) {
                // A filesystem or privilege that does not allow it: keep going.
                tracing::warn!(entry = %name, xattr = %key.to_string_lossy(), "xattr not set: {e}");
            }
        }
        Ok(())
    }

    /// Sets directory mtimes, deepest last-written first.
    fn finish(&mut self) -> Result<()> {
        let times = std::mem::take(&mut self.dir_times);
        for (comps, secs) in times.iter().rev() {
            let t = TimeSpec::new(*secs, 0);
            let fd = match self.walk(comps, &display(comps), false) {
                Ok(fd) => fd,
                Err(_) => continue, // removed by a later whiteout
            };
            futimens(fd.as_fd(), &t, &t)
                .ctx(|| format!("setting the mtime of {:?}", display(comps)))?;
        }
        Ok(())
    }
}

fn comps_key(comps: &[OsString]) -> Vec<u8> {
    let mut k = Vec::new();
    for c in comps {
        k.extend_from_slice(c.as_bytes());
        k.push(b'/');
    }
    k
}

fn owner(h: &tar::Header) -> (Uid, Gid) {
    (
        Uid::from_raw(h.uid().unwrap_or(0) as u32),
        Gid::from_raw(h.gid().unwrap_or(0) as u32),
    )
}

fn mtime(h: &tar::Header) -> i64 {
    h.mtime().unwrap_or(0) as i64
}

fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_symlink(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFLNK
}

fn stat_at(p: BorrowedFd<'_>, name: &OsStr) -> Option<nix::sys::stat::FileStat> {
    fstatat(p, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

fn open_dir_at(p: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        p,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Removes `name` under `p`, recursively for directories, without
/// following symlinks.
fn remove_at(p: BorrowedFd<'_>, name: &OsStr, entry: &str) -> Result<()> {
    let Some(st) = stat_at(p, name) else {
        return Ok(());
    };
    if is_dir(st.st_mode) {
        let fd =
            open_dir_at(p, name).ctx(|| format!("layer entry {entry:?}: opening to remove"))?;
        let mut dir = nix::dir::Dir::from_fd(
            fd.try_clone()
                .ctx(|| format!("layer entry {entry:?}: dup"))?,
        )
        .ctx(|| format!("layer entry {entry:?}: reading a directory to remove"))?;
        let mut children = Vec::new();
        for e in dir.iter() {
            let e = e.ctx(|| format!("layer entry {entry:?}: reading a directory to remove"))?;
            let n = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
            if n != "." && n != ".." {
                children.push(n);
            }
        }
        for c in children {
            remove_at(fd.as_fd(), &c, entry)?;
        }
        unlinkat(p, name, UnlinkatFlags::RemoveDir)
            .ctx(|| format!("layer entry {entry:?}: removing a directory"))
    } else {
        unlinkat(p, name, UnlinkatFlags::NoRemoveDir)
            .ctx(|| format!("layer entry {entry:?}: removing a file"))
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
