//! Short-lived workers: every runtime library call (create, start, exec,
//! kill, delete, pause, resume, pids, stats, update, the cleanup after an
//! init exits) runs in a child the daemon forks for it, which answers over a
//! socketpair and exits.
//!
//! Why: a shim lives as long as its container, and the pages of code a
//! process ever ran stay resident in it (the kernel maps 64 KiB around each
//! page fault of a file). The runtime library is most of the binary: the
//! spec, cgroups, mounts, seccomp, hooks, state files. Run in the daemon,
//! its code stayed resident in every shim for the container's whole life;
//! run in a worker, it goes with the worker. The daemon only ever runs
//! the ttrpc server, the state, the reaper, stdio pumps and events. It is
//! the way containerd-shim-runc-v2 leaves the work to a short-lived runc,
//! without executing a second binary: the worker is a fork of the daemon,
//! so it starts with everything loaded and nothing to parse.
//!
//! A fork, not a thread: the daemon's event loop is one thread, and the
//! library's blocking work used to run on a pool of threads beside it. A
//! worker is forked from the event loop's thread; the other threads the
//! daemon may have (plugin hooks) take no lock the worker needs (logging
//! writes to a descriptor without a lock, the allocator is fork-safe in
//! glibc), and the worker never touches the daemon's state or its tokio
//! runtime: its closure gets owned data, it answers, and it `_exit`s.
//!
//! Children and reaping: the shim is a child subreaper and a worker is
//! not, so a container init or exec process that the worker's library
//! call starts (through its intermediate) is reparented to the daemon
//! exactly as before. The daemon reaps each worker by pid (the orphan
//! sweep skips live workers, [`is_worker`]). A worker dies with the daemon
//! (`PR_SET_PDEATHSIG`), so a killed shim leaves none behind; one that
//! dies before it answers is an error naming how it ended, and the caller
//! cleans up what it may have left (see `service.rs`).
//!
//! The answer ([`Reply`]): a pid, at most one descriptor (a terminal's
//! master), and opaque byte fields; an error keeps its ttrpc code and its
//! message. It is framed (a length first), so the daemon goes on as soon
//! as the whole answer is in: it does not wait for the worker to exit
//! (tearing down a forked address space takes a while), and reaps it
//! later, in the background.

use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use husk_runtime::sys;
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::signal::unix::{signal, SignalKind};

use crate::error::{Result, ShimError};

/// What a worker answers on success.
#[derive(Debug, Default)]
pub struct Reply {
    pub pid: i32,
    /// A descriptor the worker passes back (a terminal's master).
    pub fd: Option<OwnedFd>,
    /// Call-specific bytes.
    pub fields: Vec<Vec<u8>>,
}

impl Reply {
    pub fn pid(pid: i32) -> Reply {
        Reply {
            pid,
            ..Default::default()
        }
    }

    /// Field `i`, empty when absent.
    pub fn field(&self, i: usize) -> &[u8] {
        self.fields.get(i).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Workers forked and not reaped yet: the orphan sweep leaves them alone.
static WORKERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn workers() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    WORKERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `pid` is a worker the daemon will reap itself.
pub fn is_worker(pid: i32) -> bool {
    workers().contains(&pid)
}

/// Unregisters a worker however its caller ends (a dropped request
/// included): an unregistered zombie is reaped by the orphan sweep.
struct Registered(i32);

impl Drop for Registered {
    fn drop(&mut self) {
        workers().remove(&self.0);
    }
}

/// Forks a worker that runs `f`; the daemon's side gets its socket end.
/// The worker keeps only stdio, the log, its socket and `keep` (the
/// descriptors `f` owns) open.
fn fork_worker<F>(what: &str, keep: &[RawFd], f: F) -> Result<(i32, OwnedFd)>
where
    F: FnOnce() -> Result<Reply>,
{
    let (ours, theirs) =
        sys::socketpair_stream().map_err(ShimError::io(format!("start the {what} worker")))?;
    let daemon = std::process::id() as i32;
    // Registered before the fork, so a sweep can never see it unregistered.
    let mut registry = workers();
    // SAFETY: the child only runs `f` (owned data; never the daemon's
    // state, locks or tokio runtime, see the module docs) and `_exit`s.
    match unsafe { nix::unistd::fork() }
        .map_err(|e| ShimError::io(format!("fork the {what} worker"))(e.into()))?
    {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let mut open = keep.to_vec();
            open.push(theirs.as_raw_fd());
            open.extend(crate::log_fd());
            close_fds_except(&open);
            worker_main(daemon, theirs, f)
        }
        nix::unistd::ForkResult::Parent { child } => {
            registry.insert(child.as_raw());
            Ok((child.as_raw(), ours))
        }
    }
}

/// The worker: runs `f`, answers, exits. Never returns.
fn worker_main<F>(daemon: i32, sock: OwnedFd, f: F) -> !
where
    F: FnOnce() -> Result<Reply>,
{
    // The daemon's signal handlers (tokio's) would wake the daemon for
    // the worker's own children; the library waits for those by pid.
    for sig in [Signal::SIGCHLD, Signal::SIGUSR2] {
        // SAFETY: restores the default disposition; no handler of ours.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    crate::start::retitle("husk-shim-worker");
    // Dies with the daemon: never left behind by a killed shim.
    if sys::set_parent_death_signal(libc::SIGKILL).is_err()
        || std::os::unix::process::parent_id() as i32 != daemon
    {
        exit_now(1);
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ShimError::Internal(
            "the worker panicked (see the shim's log)".into(),
        ))
    });
    let (frame, fd) = framed(encode(result));
    let _ = husk_runtime::channel::send_all_with_fd(
        sock.as_raw_fd(),
        &frame,
        fd.as_ref().map(AsRawFd::as_raw_fd),
    );
    exit_now(0)
}

/// Closes every descriptor but stdio and `keep`: a fork inherits all of
/// the daemon's (its sockets, and whatever another thread has open at that
/// moment, such as a lock file whose `flock` the copy would keep held).
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut next: u32 = 3;
    for fd in keep {
        let fd = fd as u32;
        if fd > next {
            // SAFETY: closes descriptors no Rust object in this process
            // will use again (the worker only runs `f`, whose own are kept).
            unsafe { libc::close_range(next, fd - 1, 0) };
        }
        next = next.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::close_range(next, u32::MAX, 0) };
}

/// `_exit(2)`: a worker leaves without running the daemon's exit handlers
/// or flushing its buffers (they are the daemon's).
fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// Runs `f` in a worker and waits for its answer without blocking the
/// event loop. The worker is reaped in the background once it has
/// answered (its exit is not waited for); one that dies before it answers
/// is waited for, to say how it ended.
pub async fn run<F>(what: &str, keep: &[RawFd], f: F) -> Result<Reply>
where
    F: FnOnce() -> Result<Reply>,
{
    // Before the fork, so the worker's exit cannot be missed.
    let mut sigchld = signal(SignalKind::child()).map_err(ShimError::io("watch SIGCHLD"))?;
    let (pid, sock) = fork_worker(what, keep, f)?;
    let registered = Registered(pid);
    let read = read_async(sock).await;
    if let Ok((bytes, _)) = &read {
        if complete(bytes).is_some() {
            tokio::spawn(async move {
                let _registered = registered;
                wait_exit(pid, &mut sigchld).await;
            });
            return finish(what, pid, read, None);
        }
    }
    let exit = wait_exit(pid, &mut sigchld).await;
    drop(registered);
    finish(what, pid, read, exit)
}

/// Waits for worker `pid` to exit and reaps it.
async fn wait_exit(pid: i32, sigchld: &mut tokio::signal::unix::Signal) -> Option<sys::Exit> {
    loop {
        match sys::waitpid(pid, true) {
            Ok(Some((_, exit))) => return Some(exit),
            Ok(None) => {
                sigchld.recv().await;
            }
            Err(_) => return None,
        }
    }
}

/// [`run`], blocking the calling thread (for the exit path, which runs
/// under the state lock, as the library call it replaces did). Inside the
/// daemon's runtime, a worker that answered is reaped in the background.
pub fn run_blocking<F>(what: &str, f: F) -> Result<Reply>
where
    F: FnOnce() -> Result<Reply>,
{
    let handle = tokio::runtime::Handle::try_current().ok();
    // Before the fork, as in `run`.
    let sigchld = match &handle {
        Some(h) => {
            let _entered = h.enter();
            signal(SignalKind::child()).ok()
        }
        None => None,
    };
    let (pid, sock) = fork_worker(what, &[], f)?;
    let registered = Registered(pid);
    let read = read_to_end(&sock);
    if let (Ok((bytes, _)), Some(h), Some(mut sigchld)) = (&read, &handle, sigchld) {
        if complete(bytes).is_some() {
            h.spawn(async move {
                let _registered = registered;
                wait_exit(pid, &mut sigchld).await;
            });
            return finish(what, pid, read, None);
        }
    }
    let exit = sys::waitpid(pid, false).ok().flatten().map(|(_, e)| e);
    drop(registered);
    finish(what, pid, read, exit)
}

fn finish(
    what: &str,
    pid: i32,
    read: std::io::Result<(Vec<u8>, Option<OwnedFd>)>,
    exit: Option<sys::Exit>,
) -> Result<Reply> {
    let died = |detail: String| {
        let how = match exit {
            Some(sys::Exit::Code(c)) => format!("exited with {c}"),
            Some(sys::Exit::Signal(s)) => format!("was killed by signal {s}"),
            None => "was lost".into(),
        };
        ShimError::Internal(format!(
            "the {what} worker (pid {pid}) {how} before it answered ({detail}); \
             see the shim's log"
        ))
    };
    let (bytes, fd) = read.map_err(|e| died(format!("reading its answer: {e}")))?;
    complete(&bytes)
        .and_then(|answer| decode(answer, fd))
        .ok_or_else(|| died(format!("{} bytes of answer", bytes.len())))?
}

/// The answer with its length in front (u32, little-endian).
fn framed((answer, fd): (Vec<u8>, Option<OwnedFd>)) -> (Vec<u8>, Option<OwnedFd>) {
    let mut out = Vec::with_capacity(4 + answer.len());
    out.extend_from_slice(&(answer.len() as u32).to_le_bytes());
    out.extend_from_slice(&answer);
    (out, fd)
}

/// The answer in `bytes` once all of its frame is there.
fn complete(bytes: &[u8]) -> Option<&[u8]> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    rest.get(..u32::from_le_bytes(*len) as usize)
}

// The answer: tag 0, pid (i32), field count (u32), fields (u32 length +
// bytes); or tag 1, ttrpc code (i32), message. Little-endian. The
// descriptor rides on the first byte.

fn encode(result: Result<Reply>) -> (Vec<u8>, Option<OwnedFd>) {
    let mut out = Vec::new();
    match result {
        Ok(reply) => {
            out.push(0);
            out.extend_from_slice(&reply.pid.to_le_bytes());
            out.extend_from_slice(&(reply.fields.len() as u32).to_le_bytes());
            for f in &reply.fields {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
                out.extend_from_slice(f);
            }
            (out, reply.fd)
        }
        Err(e) => {
            out.push(1);
            out.extend_from_slice(&protobuf::Enum::value(&e.code()).to_le_bytes());
            out.extend_from_slice(e.to_string().as_bytes());
            (out, None)
        }
    }
}

/// `None` for a truncated answer.
fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Option<Result<Reply>> {
    let (&tag, mut rest) = bytes.split_first()?;
    let int = |rest: &mut &[u8]| -> Option<[u8; 4]> {
        let (head, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(*head)
    };
    match tag {
        0 => {
            let pid = i32::from_le_bytes(int(&mut rest)?);
            let n = u32::from_le_bytes(int(&mut rest)?) as usize;
            let mut fields = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                let len = u32::from_le_bytes(int(&mut rest)?) as usize;
                if rest.len() < len {
                    return None;
                }
                let (field, tail) = rest.split_at(len);
                fields.push(field.to_vec());
                rest = tail;
            }
            Some(Ok(Reply { pid, fd, fields }))
        }
        1 => {
            let code = i32::from_le_bytes(int(&mut rest)?);
            let code =
                <ttrpc::Code as protobuf::Enum>::from_i32(code).unwrap_or(ttrpc::Code::UNKNOWN);
            Some(Err(ShimError::Coded(
                code,
                String::from_utf8_lossy(rest).into_owned(),
            )))
        }
        _ => None,
    }
}

/// One `recvmsg`: bytes appended to `buf`, a passed descriptor kept.
/// `Ok(0)` at end of file.
fn recv_some(sock: RawFd, buf: &mut Vec<u8>, fd: &mut Option<OwnedFd>) -> nix::Result<usize> {
    let mut chunk = [0u8; 4096];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut chunk)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS just gave us this descriptor; nothing
                // else owns it.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn read_to_end(sock: &OwnedFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let (mut buf, mut fd) = (Vec::new(), None);
    loop {
        match recv_some(sock.as_raw_fd(), &mut buf, &mut fd) {
            Ok(0) => return Ok((buf, fd)),
            Ok(_) if complete(&buf).is_some() => return Ok((buf, fd)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads until the answer is complete, or the worker's end closes.
async fn read_async(sock: OwnedFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let afd = crate::io::watch(sock, tokio::io::Interest::READABLE)?;
    let (mut buf, mut fd) = (Vec::new(), None);
    loop {
        let mut ready = afd.readable().await?;
        match recv_some(afd.get_ref().as_raw_fd(), &mut buf, &mut fd) {
            Ok(0) => return Ok((buf, fd)),
            Ok(_) if complete(&buf).is_some() => return Ok((buf, fd)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let (bytes, _) = encode(Ok(Reply {
            pid: 42,
            fd: None,
            fields: vec![b"a".to_vec(), Vec::new(), vec![0; 300]],
        }));
        let r = decode(&bytes, None).unwrap().unwrap();
        assert_eq!((r.pid, r.fields.len()), (42, 3));
        assert_eq!(r.field(0), b"a");
        assert_eq!(r.field(1), b"");
        assert_eq!(r.field(2).len(), 300);
        assert_eq!(r.field(7), b"");
        let (bytes, _) = encode(Err(ShimError::NotFound(
            "container \"x\" does not exist".into(),
        )));
        let e = decode(&bytes, None).unwrap().unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(e.to_string(), "container \"x\" does not exist");
    }

    #[test]
    fn a_frame_is_complete_only_with_all_its_bytes() {
        let (bytes, _) = framed(encode(Ok(Reply {
            pid: 7,
            fd: None,
            fields: vec![b"abc".to_vec()],
        })));
        for n in 0..bytes.len() {
            assert!(complete(&bytes[..n]).is_none(), "{n} bytes");
        }
        let r = decode(complete(&bytes).unwrap(), None).unwrap().unwrap();
        assert_eq!((r.pid, r.field(0)), (7, &b"abc"[..]));
    }

    #[test]
    fn a_truncated_answer_is_none() {
        let (bytes, _) = encode(Ok(Reply {
            pid: 1,
            fd: None,
            fields: vec![b"abc".to_vec()],
        }));
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], None).is_none(), "{n} bytes");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_answers_and_is_reaped() {
        let r = run("test", &[], || Ok(Reply::pid(std::process::id() as i32)))
            .await
            .unwrap();
        assert_ne!(r.pid, std::process::id() as i32);
        // Answered first, reaped in the background: no zombie stays.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while workers().contains(&r.pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "worker {} not reaped",
                r.pid
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{}", r.pid)).exists(),
            "worker {} left behind",
            r.pid
        );
        let e = run("test", &[], || {
            Err(ShimError::InvalidArgument("bad".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (ttrpc::Code::INVALID_ARGUMENT, "bad".into())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_that_dies_is_an_error_naming_how() {
        let e = run("test", &[], || exit_now(3)).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("the test worker") && msg.contains("exited with 3"),
            "{msg}"
        );
        let e = run_blocking("test", || {
            let _ = sys::kill(std::process::id() as i32, libc::SIGKILL);
            Ok(Reply::default())
        })
        .unwrap_err();
        assert!(e.to_string().contains("killed by signal 9"), "{e}");
    }
}
