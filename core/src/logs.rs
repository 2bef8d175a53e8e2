//! Container output: huskd reads the stdout/stderr FIFOs it gives the shim
//! and appends what comes to `<root>/containers/<id>/log.jsonl`, one JSON
//! line per chunk (`{"stream":"stdout","time":<ns>,"data":"..."}`), so
//! `husk logs` works after the container exits and after a daemon restart
//! (the FIFOs live in the bundle; the shim keeps them open meanwhile).
//!
//! huskd holds a writer on each FIFO too, so its reader never sees EOF
//! before the container's process opened them; the writers are released
//! when the container exits, and the reader then drains to EOF.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::api::Frame;
use crate::error::{CoreError, IoContext, Result};

/// One log line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub stream: String,
    pub time: u128,
    pub data: String,
}

/// The FIFO names in a bundle.
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Creates the stdout/stderr FIFOs (and `stdin` with `stdin`) in `bundle`.
pub fn make_fifos(bundle: &Path, stdin: bool) -> Result<()> {
    let names: &[&str] = if stdin {
        &["stdin", "stdout", "stderr"]
    } else {
        &STREAMS
    };
    for s in names {
        let p = bundle.join(s);
        match nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(CoreError::io(format!("mkfifo {}", p.display()), e.into())),
        }
    }
    Ok(())
}

/// How much of `b` can be decoded now: all of it, less an incomplete UTF-8
/// sequence at its end (at most 3 bytes), which waits for the next read.
pub fn utf8_boundary(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() && b.len() - e.valid_up_to() < 4 => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

/// The capture of one container's output.
pub struct LogSink {
    pub path: PathBuf,
    file: Mutex<File>,
    holders: Mutex<Vec<File>>,
    /// (bytes written, all streams at EOF).
    progress: watch::Sender<(u64, bool)>,
}

impl LogSink {
    /// Opens the FIFOs of `bundle` and starts copying them into `log`.
    pub fn start(bundle: &Path, log: &Path) -> Result<Arc<LogSink>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .ctx(|| format!("opening {}", log.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut receivers = Vec::new();
        let mut holders = Vec::new();
        for s in STREAMS {
            let p = bundle.join(s);
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(&p)
                .ctx(|| format!("opening {} for reading", p.display()))?;
            let holder = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&p)
                .ctx(|| format!("opening {} for writing", p.display()))?;
            receivers.push((s, rx));
            holders.push(holder);
        }
        let (progress, _) = watch::channel((len, false));
        let sink = Arc::new(LogSink {
            path: log.to_path_buf(),
            file: Mutex::new(file),
            holders: Mutex::new(holders),
            progress,
        });
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(receivers.len()));
        for (stream, mut rx) in receivers {
            let sink = sink.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                let mut carry = Vec::new();
                loop {
                    match rx.read(&mut buf).await {
                        Ok(0) => {
                            if !carry.is_empty() {
                                sink.append(stream, &carry);
                            }
                            break;
                        }
                        Ok(n) => {
                            carry.extend_from_slice(&buf[..n]);
                            let cut = utf8_boundary(&carry);
                            if cut > 0 {
                                let chunk: Vec<u8> = carry.drain(..cut).collect();
                                sink.append(stream, &chunk);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%e, stream, "reading container output");
                            break;
                        }
                    }
                }
                if open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    sink.progress.send_modify(|p| p.1 = true);
                }
            });
        }
        Ok(sink)
    }

    fn append(&self, stream: &str, data: &[u8]) {
        let e = LogEntry {
            stream: stream.to_string(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            data: String::from_utf8_lossy(data).into_owned(),
        };
        let mut line = serde_json::to_vec(&e).expect("a log entry serializes");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap();
        if let Err(err) = f.write_all(&line) {
            tracing::warn!(%err, path = %self.path.display(), "writing the container log");
            return;
        }
        let n = line.len() as u64;
        self.progress.send_modify(|p| p.0 += n);
    }

    /// Drops huskd's own writers (the container exited) and waits, at most
    /// `timeout`, for the readers to drain to EOF.
    pub async fn close(&self, timeout: Duration) {
        self.holders.lock().unwrap().clear();
        let mut rx = self.progress.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| p.1)).await;
        self.progress.send_modify(|p| p.1 = true);
    }

    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.progress.subscribe()
    }
}

/// Opens a container's log for [`stream_log`]; `None` if it has none.
pub async fn open_log(path: &Path) -> Result<Option<tokio::fs::File>> {
    match tokio::fs::File::open(path).await {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(format!("opening {}", path.display()), e)),
    }
}

/// Sends an opened log as output frames; with `live`, keeps following
/// until the capture reaches EOF on every stream. The file is opened by
/// the caller first, so a container removed meanwhile (`--rm`) still has
/// its whole log read.
pub async fn stream_log(
    file: Option<tokio::fs::File>,
    live: Option<watch::Receiver<(u64, bool)>>,
    out: &mpsc::Sender<Frame>,
) -> Result<()> {
    let Some(mut f) = file else { return Ok(()) };
    let mut live = live;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Whether the capture was done before this read: then a read to
        // EOF has everything.
        let done = live.as_ref().map(|rx| rx.borrow().1).unwrap_or(true);
        loop {
            let n = f
                .read(&mut buf)
                .await
                .ctx(|| "reading a container log".into())?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Ok(e) = serde_json::from_slice::<LogEntry>(&line) {
                    let frame = Frame::Output {
                        stream: e.stream,
                        data: e.data,
                    };
                    if out.send(frame).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if done {
            return Ok(());
        }
        let rx = live.as_mut().expect("live when not done");
        if rx.changed().await.is_err() {
            // The sink is gone: one last read.
            live = None;
        }
    }
}

/// The shim's own log: containerd gives every shim a FIFO named `log` in
/// its bundle (containerd-shim-runc-v2 will not start without it); huskd
/// reads it into its own log, one line per record, tagged with the
/// container id. Reading stops when this is dropped.
pub struct ShimLog {
    task: tokio::task::AbortHandle,
}

impl Drop for ShimLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ShimLog {
    /// Creates (if needed) and opens `bundle/log`.
    pub fn start(bundle: &Path, id: &str) -> Result<ShimLog> {
        let p = bundle.join("log");
        match nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(CoreError::io(format!("mkfifo {}", p.display()), e.into())),
        }
        // Read-write, so there is never an EOF between writers.
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&p)
            .ctx(|| format!("opening {}", p.display()))?;
        let id = id.to_string();
        let task = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(rx).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "shim", id = %id, "{l}");
            }
        });
        Ok(ShimLog {
            task: task.abort_handle(),
        })
    }
}

/// An exec's output FIFOs (`<bundle>/<exec id>-stdout`, `-stderr`),
/// streamed straight to a client as output frames.
pub struct ExecIo {
    pub paths: Vec<(String, PathBuf)>,
    holders: Vec<File>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ExecIo {
    /// Creates and opens the FIFOs; output goes to `out` as it comes.
    pub fn start(
        bundle: &Path,
        exec_id: &str,
        stdin: bool,
        tty: bool,
        out: mpsc::Sender<Frame>,
    ) -> Result<ExecIo> {
        let mut io = ExecIo {
            paths: Vec::new(),
            holders: Vec::new(),
            tasks: Vec::new(),
        };
        if stdin {
            let p = bundle.join(format!("{exec_id}-stdin"));
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| CoreError::io(format!("mkfifo {}", p.display()), e.into()))?;
            io.paths.push(("stdin".into(), p));
        }
        let streams: &[&'static str] = if tty { &STREAMS[..1] } else { &STREAMS };
        for &s in streams {
            let p = bundle.join(format!("{exec_id}-{s}"));
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| CoreError::io(format!("mkfifo {}", p.display()), e.into()))?;
            let mut rx = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(&p)
                .ctx(|| format!("opening {}", p.display()))?;
            io.holders.push(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&p)
                    .ctx(|| format!("opening {} for writing", p.display()))?,
            );
            let out = out.clone();
            io.tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                let mut carry = Vec::new();
                while let Ok(n) = rx.read(&mut buf).await {
                    if n == 0 {
                        if !carry.is_empty() {
                            let f = Frame::Output {
                                stream: s.to_string(),
                                data: String::from_utf8_lossy(&carry).into_owned(),
                            };
                            let _ = out.send(f).await;
                        }
                        break;
                    }
                    carry.extend_from_slice(&buf[..n]);
                    let cut = utf8_boundary(&carry);
                    if cut == 0 {
                        continue;
                    }
                    let chunk: Vec<u8> = carry.drain(..cut).collect();
                    let f = Frame::Output {
                        stream: s.to_string(),
                        data: String::from_utf8_lossy(&chunk).into_owned(),
                    };
                    if out.send(f).await.is_err() {
                        break;
                    }
                }
            }));
            io.paths.push((s.to_string(), p));
        }
        Ok(io)
    }

    /// The process exited: drain to EOF (at most `timeout`), remove the FIFOs.
    pub async fn finish(mut self, timeout: Duration) {
        self.holders.clear();
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(timeout, t).await.is_err() {
                abort.abort();
            }
        }
        for (_, p) in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}
