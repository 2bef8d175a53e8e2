//! The one narrow layer through which the runtime makes system calls.
//!
//! Everything above this module plans what to do as plain data (which
//! namespaces, which mounts, which capabilities) and is unit-tested without
//! root; only these thin wrappers touch the kernel. Each returns an
//! `io::Error` carrying errno, and callers add the context.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2). `source`, `fstype` and `data` are optional as in the C API.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    // SAFETY: every pointer is either null or a live NUL-terminated string.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags as libc::c_ulong,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })?;
    Ok(())
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: target is a live C string.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

/// Makes `new_root` the root of the current mount namespace and detaches the
/// old root, without needing a directory to park it in: pivot_root(".", ".")
/// stacks the old root on top of the new one, and unmounting "." removes it.
pub fn pivot_root(new_root: &Path) -> io::Result<()> {
    let old = open_dir(Path::new("/"))?;
    let new = open_dir(new_root)?;
    // SAFETY: plain syscalls on owned descriptors and a static path.
    unsafe {
        check(libc::fchdir(new.as_raw_fd()))?;
        let dot = c".";
        check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
        check(libc::fchdir(old.as_raw_fd()))?;
    }
    // The old root may be shared with the host: make it a slave first so the
    // unmount below cannot propagate out.
    mount(
        None,
        Path::new("."),
        None,
        (libc::MS_SLAVE | libc::MS_REC) as u64,
        None,
    )?;
    umount_detach(Path::new("."))?;
    chdir(Path::new("/"))
}

pub fn chroot(new_root: &Path) -> io::Result<()> {
    let p = cstr(new_root)?;
    // SAFETY: p is a live C string.
    check(unsafe { libc::chroot(p.as_ptr()) })?;
    chdir(Path::new("/"))
}

pub fn chdir(dir: &Path) -> io::Result<()> {
    let p = cstr(dir)?;
    // SAFETY: p is a live C string.
    check(unsafe { libc::chdir(p.as_ptr()) })?;
    Ok(())
}

pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open(path, libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC)
}

pub fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: p is a live C string; on success we own the returned fd.
    let fd = check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o600) })?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until the FIFO or pipe whose write end is `fd` has no reader
/// left (poll reports POLLERR), or `timeout_ms` passes (`Ok(false)`).
pub fn wait_no_readers(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        // None: POLLERR and POLLHUP are always reported, and a write end
        // with readers reports nothing else that is asked for.
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd, as the count says.
        match check(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare only takes flags.
    check(unsafe { libc::unshare(flags) })?;
    Ok(())
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is a live namespace descriptor.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })?;
    Ok(())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

pub fn setdomainname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::setdomainname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

pub fn mknod(path: &Path, mode: libc::mode_t, major: u64, minor: u64) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a live C string.
    check(unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major as u32, minor as u32)) })?;
    Ok(())
}

pub fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a live C string.
    check(unsafe { libc::mkfifo(p.as_ptr(), mode) })?;
    Ok(())
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a live C string.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) })?;
    Ok(())
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: lim is a valid rlimit; prlimit on pid 0 is the calling process.
    check(unsafe {
        libc::prlimit(
            0,
            resource as libc::__rlimit_resource_t,
            &lim,
            std::ptr::null_mut(),
        )
    })?;
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the prctl options used here take one integer argument.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) })?;
    Ok(())
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong)
}

/// Sets the process name `ps` and /proc/PID/comm show (at most 15 bytes).
pub fn set_process_name(name: &CStr) -> io::Result<()> {
    prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong)
}

pub fn set_child_subreaper() -> io::Result<()> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
}

/// Asks the kernel to SIGKILL us when the process that forked us dies, so an
/// init whose runtime crashed mid-create does not linger.
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

/// capset(2) of the three process sets at once: setting them one by one
/// can fail midway, since effective must always stay within permitted.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(effective);
    let (p0, p1) = split(permitted);
    let (i0, i1) = split(inheritable);
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and data follow the kernel's v3 layout (two data words).
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)?;
    Ok(())
}

pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: plain syscall. The raw syscall is per-thread; callers are single-threaded.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    Ok(())
}

pub fn setgroups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length describe `gids`.
    check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) })?;
    Ok(())
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// fork(2). Only called from the runtime's single-threaded init process.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the caller is single-threaded (the freshly exec'd init), so the
    // child may allocate freely.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// The descriptors a new child gets, prepared before the fork: the child
/// of a multi-threaded process must not allocate (another thread may hold
/// the allocator's lock), so it only makes system calls on this data.
#[derive(Default)]
pub struct ChildFds {
    /// (from, to): `from` becomes descriptor `to` (stdio).
    dups: Vec<(RawFd, RawFd)>,
    /// Descriptors the child inherits (close-on-exec cleared).
    keep: Vec<RawFd>,
    /// Every descriptor number the child holds after the dups, sorted:
    /// stdio, the dups' targets and the keeps.
    retained: Vec<RawFd>,
}

impl ChildFds {
    /// The child gets `from` as descriptor `to`.
    pub fn dup(&mut self, from: RawFd, to: RawFd) {
        self.dups.push((from, to));
        self.retain(to);
    }

    /// The child inherits `fd` (its close-on-exec flag is cleared there).
    pub fn keep(&mut self, fd: RawFd) {
        self.keep.push(fd);
        self.retain(fd);
    }

    fn retain(&mut self, fd: RawFd) {
        if let Err(at) = self.retained.binary_search(&fd) {
            self.retained.insert(at, fd);
        }
    }
}

/// argv and envp as execve takes them, with the strings they point into.
struct CommandLine {
    // Owners of the strings `argv` and `envp` point into.
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings the value owns, which
// are never changed after `new`: sharing or sending it is as safe as
// sharing those strings.
unsafe impl Send for CommandLine {}
// SAFETY: as above; nothing mutates through a shared value.
unsafe impl Sync for CommandLine {}

impl CommandLine {
    fn new<A: AsRef<OsStr>, K: AsRef<OsStr>, V: AsRef<OsStr>>(
        args: &[A],
        env: &[(K, V)],
    ) -> io::Result<CommandLine> {
        let args = args.iter().map(cstr).collect::<io::Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_ref().as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_ref().as_bytes());
                cstr(OsStr::from_bytes(&kv))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let nul = std::iter::once(std::ptr::null());
        let argv = args.iter().map(|a| a.as_ptr()).chain(nul.clone()).collect();
        let envp = env.iter().map(|e| e.as_ptr()).chain(nul).collect();
        Ok(CommandLine {
            _args: args,
            _env: env,
            argv,
            envp,
        })
    }
}

/// A program to execute in a new child, prepared before the fork (see
/// [`ChildFds`]).
pub struct ExecPlan {
    path: CString,
    command: CommandLine,
    fds: ChildFds,
}

impl ExecPlan {
    pub fn new(
        path: &Path,
        args: &[&OsStr],
        env: &[(&OsStr, &OsStr)],
        fds: ChildFds,
    ) -> io::Result<ExecPlan> {
        Ok(ExecPlan {
            path: cstr(path)?,
            command: CommandLine::new(args, env)?,
            fds,
        })
    }
}

/// The kernel's `struct clone_args` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3's flag to start the child in the cgroup2 directory `cgroup`
/// (Linux 5.7); libc's constant is mistyped.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `plan` in a child process and returns its pid once the program
/// has been executed (an exec failure is the error, the child reaped).
///
/// With `cgroup` (a cgroup2 directory), the child is born in that cgroup
/// (clone3 with CLONE_INTO_CGROUP): no write to `cgroup.procs`, whose
/// global lock waits for an RCU grace period when cold. Kernels without
/// it fail with ENOSYS, E2BIG or EINVAL; callers then spawn without and
/// move the child. Otherwise the child is a plain fork of the calling
/// thread, in that thread's cgroups (cgroup v1 places single threads).
///
/// The child resets its signal mask and SIGPIPE (as std's Command does),
/// makes the `dup`s, clears close-on-exec of the `keep`s, and executes.
pub fn spawn(plan: &ExecPlan, cgroup: Option<BorrowedFd<'_>>) -> io::Result<libc::pid_t> {
    // SAFETY: exec_child makes system calls on the prepared plan only.
    unsafe { clone_child(cgroup, |report| exec_child(plan, report)) }
}

/// Like [`spawn`], but the child executes nothing: it goes on in its copy
/// of this process and exits with what `run` returns. For a caller that
/// already runs from an unwritable binary, so that its copy needs no exec
/// of a protected one (see `sealed_exe`).
///
/// Before `run`, the child does what an exec would: besides the `dup`s and
/// `keep`s, it closes every other descriptor and resets every signal
/// handler to its default action (a handler of this process, tokio's
/// among them, would write to a descriptor number the child reuses).
///
/// # Safety
/// `run` allocates and takes locks: the caller must be the only thread of
/// its process that can hold the allocator's or any other lock at the
/// time (its other threads blocked in a join, say).
pub unsafe fn spawn_running(
    fds: &ChildFds,
    cgroup: Option<BorrowedFd<'_>>,
    run: &(dyn Fn() -> i32 + Sync),
) -> io::Result<libc::pid_t> {
    // SAFETY: per this function's contract, run may allocate in the child.
    unsafe {
        clone_child(cgroup, |report| {
            prepare_child(fds, report);
            signals_to_default(|handler| {
                handler != libc::SIG_IGN as u64 && handler != libc::SIG_DFL as u64
            });
            close_all_but(&fds.retained);
            libc::_exit(run())
        })
    }
}

/// Forks with clone3 (into `cgroup` if given), runs `child` in the child,
/// and waits until the child closes the close-on-exec pipe whose write end
/// `child` gets (an exec, or closing it), or writes an errno on it (the
/// child reaped, the errno the error).
///
/// # Safety
/// `child` runs in a copy of the calling thread only; it should execute
/// or exit (the child exits with 127 if it returns).
unsafe fn clone_child(
    cgroup: Option<BorrowedFd<'_>>,
    child: impl FnOnce(RawFd),
) -> io::Result<libc::pid_t> {
    let mut pipe = [0; 2];
    // SAFETY: pipe is a valid out-array of two ints.
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    let wr_fd = wr.as_raw_fd();
    // SAFETY: clone3 without CLONE_VM or a stack behaves as fork(2): the
    // child runs on a copy of this stack, and never returns from `child`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child(wr_fd);
        // SAFETY: in the child, which must not return into the caller.
        unsafe { libc::_exit(127) }
    }
    let pid = pid as libc::pid_t;
    drop(wr);
    // EOF: the child executed or closed the pipe; four bytes: errno.
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled rest of buf.
        let n = unsafe {
            libc::read(
                rd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    let _ = kill(pid, libc::SIGKILL);
                    let _ = waitpid(pid, false);
                    return Err(e);
                }
            }
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    let _ = waitpid(pid, false);
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
}

/// Writes errno to `report` and exits: a child's setup failed.
///
/// # Safety
/// Only in a child of [`clone_child`].
unsafe fn child_failed(report: RawFd) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    let bytes = errno.to_ne_bytes();
    libc::write(report, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

/// A child's setup: signal mask, SIGPIPE, descriptors. Async-signal-safe
/// calls only, on the prepared `fds`; a failure reports errno and exits.
///
/// # Safety
/// Only in a child of [`clone_child`].
unsafe fn prepare_child(fds: &ChildFds, report: RawFd) {
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0
        || libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
    {
        child_failed(report);
    }
    for &(from, to) in &fds.dups {
        let r = if from == to {
            libc::fcntl(from, libc::F_SETFD, 0)
        } else {
            libc::dup2(from, to)
        };
        if r < 0 {
            child_failed(report);
        }
    }
    for &fd in &fds.keep {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            child_failed(report);
        }
    }
}

/// The child's side of [`spawn`]. Async-signal-safe calls only, on the
/// descriptors and strings the parent prepared; errno goes to `report`.
///
/// # Safety
/// Only to be called in a freshly forked child.
unsafe fn exec_child(plan: &ExecPlan, report: RawFd) -> ! {
    prepare_child(&plan.fds, report);
    let command = &plan.command;
    libc::execve(
        plan.path.as_ptr(),
        command.argv.as_ptr(),
        command.envp.as_ptr(),
    );
    child_failed(report)
}

/// Closes every descriptor from 3 up but those in `retained` (sorted).
///
/// # Safety
/// The caller must own every descriptor this closes: only in a child
/// that goes on as if it had executed a program.
unsafe fn close_all_but(retained: &[RawFd]) {
    let mut from: libc::c_uint = 3;
    for &fd in retained.iter().filter(|&&fd| fd >= 3) {
        let fd = fd as libc::c_uint;
        if fd > from {
            libc::syscall(libc::SYS_close_range, from, fd - 1, 0);
        }
        from = fd + 1;
    }
    libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
}

pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// waitpid(2). Returns `None` when `nohang` is set and nothing has exited,
/// and the pid that ended otherwise.
pub fn waitpid(pid: libc::pid_t, nohang: bool) -> io::Result<Option<(libc::pid_t, Exit)>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, if nohang { libc::WNOHANG } else { 0 }) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        let exit = if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else {
            // Stopped or continued: not an exit, keep waiting.
            if nohang {
                return Ok(None);
            }
            continue;
        };
        return Ok(Some((r, exit)));
    }
}

/// Marks every descriptor from `first` upwards close-on-exec, so nothing of
/// the runtime's leaks into the container (the CVE-2024-21626 class).
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a descriptor only change its flags.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        check(libc::fcntl(fd, libc::F_SETFD, flags))?;
    }
    Ok(())
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors we hold.
    check(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// execve(2): only returns on failure.
pub fn execve(path: &CStr, args: &[CString], env: &[CString]) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of live C strings.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The mount flags of the filesystem holding `path` that the kernel locks in
/// a user namespace (nosuid, nodev, noexec, ro, atime): a bind remount there
/// must repeat them or fail with EPERM.
pub fn locked_mount_flags(path: &Path) -> io::Result<u64> {
    let p = cstr(path)?;
    // SAFETY: st is a valid out-pointer, p a live C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    let pairs = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |acc, (_, ms)| acc | *ms))
}

/// A sealed in-memory copy of a file: once sealed, nobody (not even root in
/// a container holding /proc/PID/exe) can write to it.
pub fn sealed_memfd_copy(name: &CStr, source: &Path) -> io::Result<OwnedFd> {
    let src = open(source, libc::O_RDONLY)?;
    // SAFETY: name is a live C string; on success we own the fd.
    let fd = check(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: fd was just returned by memfd_create.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        // SAFETY: both descriptors are live; a null offset uses the file position.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 30,
            )
        };
        match n {
            0 => break,
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our own memfd.
    check(unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(memfd)
}

/// Moves `from` over `to` atomically, as rename(2) does, but an existing
/// `to` is swapped out (renameat2 RENAME_EXCHANGE) and then unlinked under
/// the name `from`: ext4 flushes the new file's data to the disk on a
/// rename that replaces a file (auto_da_alloc; 0.3-0.45 ms of wall time
/// here), and not on an exchange (0.04 ms). Plain rename where there is
/// nothing to replace or the filesystem cannot exchange.
pub fn replace_by_rename(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are live C strings.
    let exchanged = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if exchanged == 0 {
        return std::fs::remove_file(from);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS) => std::fs::rename(from, to),
        _ => Err(e),
    }
}

/// execveat(fd, "", AT_EMPTY_PATH): executes exactly the file `fd` holds.
/// Returns only on failure.
pub fn execveat_empty(
    fd: BorrowedFd<'_>,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> io::Error {
    let command = match CommandLine::new(args, env) {
        Ok(command) => command,
        Err(e) => return e,
    };
    // SAFETY: argv and envp are NUL-terminated arrays of live C strings
    // `command` owns; fd is open.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            command.argv.as_ptr(),
            command.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

/// Whether the file at `path` cannot be written through the path it was
/// reached by: it lies on a read-only mount (the detached read-only mount
/// of [`readonly_detached_mount`], say) or is a write-sealed memfd.
pub fn unwritable_file(path: &Path) -> io::Result<bool> {
    let fd = open(path, libc::O_RDONLY)?;
    // SAFETY: statvfs is plain data; all zeros is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and stat a valid out-struct.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut stat) })?;
    if stat.f_flag & libc::ST_RDONLY != 0 {
        return Ok(true);
    }
    Ok(memfd_seals(fd.as_raw_fd()).is_ok_and(|s| s & libc::F_SEAL_WRITE != 0))
}

/// A read-only, detached bind mount of the file at `path` (open_tree +
/// mount_setattr). The mount is never attached to any namespace, so no
/// container can see or remount it, and every write to the file through it
/// fails with EROFS; unlike a memfd copy it costs no copying.
pub fn readonly_detached_mount(path: &Path) -> io::Result<OwnedFd> {
    let tree = open_tree_clone(path, false)?;
    mount_setattr(
        tree.as_fd(),
        false,
        &MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ..MountAttr::default()
        },
    )?;
    Ok(tree)
}

/// A detached copy of the mount at `path` (with the mounts below it if
/// `recursive`: a bind or rbind source), looked up with the caller's
/// permissions now, attached later with [`move_mount_to`], from another
/// mount namespace if need be. It is made a slave of its source: mounts
/// on the host still reach it, nothing mounted on it reaches the host.
pub fn clone_mount_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let tree = open_tree_clone(path, recursive)?;
    mount_setattr(
        tree.as_fd(),
        recursive,
        &MountAttr {
            propagation: libc::MS_SLAVE as u64,
            ..MountAttr::default()
        },
    )?;
    Ok(tree)
}

/// Attaches a detached mount tree (see [`clone_mount_tree`]) at `dest`.
pub fn move_mount_to(tree: BorrowedFd<'_>, dest: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let d = cstr(dest)?;
    // SAFETY: both strings are live C strings, tree a mount fd we borrow.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    } as libc::c_int)?;
    Ok(())
}

/// Whether the file `fd` refers to (any descriptor, O_PATH and mount
/// trees too) is a directory.
pub fn is_dir_fd(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: st is a valid out-pointer, fd a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// open_tree(OPEN_TREE_CLONE): a detached copy of the mount at `path`.
fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let p = cstr(path)?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: p is a live C string; on success we own the returned fd.
    let fd = check(
        unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) }
            as libc::c_int,
    )?;
    // SAFETY: fd was just returned by open_tree.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mount_setattr(tree: BorrowedFd<'_>, recursive: bool, attr: &MountAttr) -> io::Result<()> {
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: attr is a valid mount_attr of the size we pass.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr,
            std::mem::size_of::<MountAttr>(),
        )
    } as libc::c_int)?;
    Ok(())
}

/// bpf(2) with an attribute block (a `union bpf_attr`, zero-padded).
fn bpf(cmd: libc::c_int, attr: &mut [u8; 128]) -> io::Result<libc::c_int> {
    // SAFETY: attr is a zeroed bpf_attr of the size we pass; the kernel
    // reads and writes within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as libc::c_int)
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads a cgroup device program (raw 8-byte instructions). On a verifier
/// rejection the error carries the verifier's log.
pub fn bpf_load_cgroup_device(insns: &[u64]) -> io::Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let license = c"Apache-2.0";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1);
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new program descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}{}{}",
                    if text.is_empty() { "" } else { "; verifier: " },
                    text.trim()
                ),
            ))
        }
    }
}

/// Ids of the device programs attached to the cgroup `cgroup`.
pub fn bpf_cgroup_device_programs(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, BPF_CGROUP_DEVICE);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes(attr[24..28].try_into().unwrap_or_default()) as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}

/// Attaches `prog` to the cgroup, alongside (not instead of) what is there.
pub fn bpf_attach_cgroup_device(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    put_u32(&mut attr, 12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// Detaches the program with id `id` from the cgroup.
pub fn bpf_detach_cgroup_device(cgroup: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, id);
    let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new program descriptor we now own.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
}

/// Installs a seccomp filter in the calling thread (seccomp(2),
/// SECCOMP_SET_MODE_FILTER). The kernel copies the program.
pub fn seccomp_set_filter(flags: u32, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ABI version the kernel offers
/// (`landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`);
/// ENOSYS or EOPNOTSUPP where the kernel has no Landlock or it is off.
pub fn landlock_abi_version() -> io::Result<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a NULL attribute and size 0 the kernel reads nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// A Landlock ruleset handling the filesystem rights `handled_fs`
/// (`struct landlock_ruleset_attr`, its first field only).
pub fn landlock_create_ruleset(handled_fs: u64) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads size_of::<u64>() bytes from `attr`, alive
    // for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &handled_fs as *const u64,
            std::mem::size_of::<u64>(),
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `struct landlock_path_beneath_attr`, packed as in the kernel's UAPI.
#[repr(C, packed)]
struct LandlockPathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Allows `allowed` beneath the file or directory `parent` (an O_PATH
/// descriptor is enough).
pub fn landlock_add_path_rule(
    ruleset: BorrowedFd<'_>,
    allowed: u64,
    parent: BorrowedFd<'_>,
) -> io::Result<()> {
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_ulong = 1;
    let attr = LandlockPathBeneath {
        allowed_access: allowed,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: `attr` is the packed UAPI struct, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const LandlockPathBeneath,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Confines the calling thread (and what it executes) to `ruleset`, for
/// good. Needs no_new_privs or CAP_SYS_ADMIN.
pub fn landlock_restrict_self(ruleset: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd(),
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `fd` to `uid`:`gid` if it is a FIFO, pipe or socket owned by
/// someone else (stdio the container must be able to reopen from its user
/// namespace). Devices and files are left alone. Returns whether it changed.
pub fn fchown_stream(fd: RawFd, uid: u32, gid: u32) -> io::Result<bool> {
    // SAFETY: `st` is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    let kind = st.st_mode & libc::S_IFMT;
    if (kind != libc::S_IFIFO && kind != libc::S_IFSOCK) || (st.st_uid, st.st_gid) == (uid, gid) {
        return Ok(false);
    }
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fchown(fd, uid, gid) })?;
    Ok(true)
}

/// The seals set on a memfd (F_GET_SEALS).
pub fn memfd_seals(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS only reads.
    check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) })
}

pub fn socketpair_stream() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Blocks or unblocks signals for the calling thread.
/// Sets every signal this process ignores back to its default action:
/// ignored signals survive execve, and a container's program must not
/// start with the runtime's (Rust ignores SIGPIPE; a daemon started from a
/// shell may ignore SIGINT and SIGQUIT, and glibc's internal signals 32 and
/// 33 can arrive ignored too). Handlers are left alone (execve resets them
/// itself).
pub fn default_ignored_signals() {
    signals_to_default(|handler| handler == libc::SIG_IGN as u64)
}

/// Sets every signal whose current handler (the kernel's `sa_handler`)
/// `reset` selects back to its default action.
fn signals_to_default(reset: impl Fn(u64) -> bool) {
    // The kernel's struct sigaction, all zero: SIG_DFL, no flags, an empty
    // mask (32 bytes covers every architecture's layout). rt_sigaction
    // directly, as glibc refuses its internal signals.
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = [0u64; 4];
        let dfl = [0u64; 4];
        let sigset_size = std::mem::size_of::<u64>();
        // SAFETY: rt_sigaction reads at most the kernel's struct sigaction
        // from `dfl` and writes it into `old`, both 32 bytes; the handler
        // is the first field everywhere.
        unsafe {
            let got = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                sigset_size,
            );
            if got == 0 && reset(old[0]) {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    sigset_size,
                );
            }
        }
    }
}

pub fn set_signal_mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        check(libc::pthread_sigmask(how, &set, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// Clears the signal mask inherited across exec, so the container's process
/// starts with every signal deliverable.
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: an empty set is a valid mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::pthread_sigmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// Waits for one of the blocked `signals`, up to `timeout_ms`.
pub fn wait_signal(signals: &[libc::c_int], timeout_ms: i64) -> io::Result<Option<libc::c_int>> {
    // SAFETY: set is initialised; info and ts are valid for the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let ts = libc::timespec {
            tv_sec: timeout_ms / 1000,
            tv_nsec: (timeout_ms % 1000) * 1_000_000,
        };
        let r = libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r))
    }
}

pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Reads the start time of `pid` (field 22 of /proc/PID/stat, in clock
/// ticks since boot), which with the pid identifies a process uniquely.
pub fn process_start_time(pid: libc::pid_t) -> io::Result<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

/// Splits /proc/PID/stat into (start time, state). The command name may hold
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, char)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, starttime field 22 (1-based).
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_fds_retain_stdio_targets_and_keeps_sorted_once() {
        let mut fds = ChildFds::default();
        fds.keep(9);
        fds.dup(12, 1);
        fds.keep(4);
        fds.keep(9);
        assert_eq!(fds.retained, vec![1, 4, 9]);
        assert_eq!(fds.keep, vec![9, 4, 9]);
    }

    extern "C" fn noop_handler(_: libc::c_int) {}

    /// The forked child sees what an exec would leave: the kept and dup'd
    /// descriptors only, no handler of the parent's. Its checks are system
    /// calls only (the test harness has other threads), and its exit code
    /// says which failed.
    #[test]
    fn spawn_running_leaves_what_an_exec_would() {
        let (kept, _kept_peer) = socketpair_stream().unwrap();
        let (dropped, _dropped_peer) = socketpair_stream().unwrap();
        // Not close-on-exec: a fork keeps it, an exec would too; the child
        // must still lose it, as it was not asked for.
        set_cloexec(dropped.as_raw_fd(), false).unwrap();
        let (stdout_source, _peer) = socketpair_stream().unwrap();
        // SAFETY: installs a handler that does nothing.
        unsafe {
            libc::signal(
                libc::SIGUSR2,
                noop_handler as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        let mut fds = ChildFds::default();
        fds.keep(kept.as_raw_fd());
        fds.dup(stdout_source.as_raw_fd(), 1);
        let (kept_fd, dropped_fd, source_fd) = (
            kept.as_raw_fd(),
            dropped.as_raw_fd(),
            stdout_source.as_raw_fd(),
        );
        let check = || -> i32 {
            // SAFETY: fcntl and sigaction on plain integers and out-structs.
            unsafe {
                let open = |fd| libc::fcntl(fd, libc::F_GETFD) >= 0;
                let mut failed = 0;
                if !open(kept_fd) || libc::fcntl(kept_fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 {
                    failed |= 1;
                }
                if open(dropped_fd) || open(source_fd) {
                    failed |= 2;
                }
                if !open(1) {
                    failed |= 4;
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut old);
                if old.sa_sigaction != libc::SIG_DFL {
                    failed |= 8;
                }
                failed
            }
        };
        // SAFETY: the child only makes system calls (see above).
        let pid = unsafe { spawn_running(&fds, None, &check) }.unwrap();
        let status = waitpid(pid, false).unwrap().map(|(_, e)| e);
        // SAFETY: restores the default action.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_DFL) };
        assert_eq!(
            status,
            Some(Exit::Code(0)),
            "1: kept fd, 2: others closed, 4: stdout dup, 8: handler reset"
        );
    }

    #[test]
    fn proc_stat_with_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_proc_stat(line), Some((98765, 'S')));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn sealed_memfd_copy_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bin");
        std::fs::write(&src, b"binary contents").unwrap();
        let memfd = sealed_memfd_copy(c"test", &src).unwrap();
        let seals = memfd_seals(memfd.as_raw_fd()).unwrap();
        assert_ne!(seals & libc::F_SEAL_WRITE, 0);
        let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        assert_eq!(std::fs::read(&path).unwrap(), b"binary contents");
        // Opening for writing may succeed; writing, truncating or growing never does.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = std::io::Write::write_all(&mut f, b"pwned").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let err = std::fs::write(&path, b"pwned").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn exit_status_follows_shell_convention() {
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Signal(9).status(), 137);
    }
}
