//! A blocking API client (what `husk` uses).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::{Frame, Request, API_VERSION};

/// An error from the client: the daemon's (with its kind) or a transport one.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Api { kind: String, message: String },
    #[error("cannot reach huskd at {socket}: {source}{hint}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
        hint: String,
    },
    #[error("talking to huskd: {0}")]
    Io(#[from] std::io::Error),
    #[error("huskd sent a line that is not a frame: {0}")]
    Protocol(String),
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// Calls `method`; `on_output(stream, data)` gets output frames.
    pub fn call_streaming(
        &self,
        method: &str,
        params: Value,
        mut on_output: impl FnMut(&str, &str),
    ) -> Result<Value, ClientError> {
        self.call_frames(method, params, None, &mut |_| {}, &mut on_output)
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_streaming(method, params, |_, _| {})
    }

    /// Calls a method that attaches stdin: the request, then this process's
    /// stdin as `stdin` frames (and `close_stdin` at its EOF), while output
    /// frames go to `on_output`. With `tty`, the local terminal (if stdin is
    /// one) is put in raw mode for the call and its size sent.
    pub fn call_interactive(
        &self,
        method: &str,
        params: Value,
        tty: bool,
        mut on_output: impl FnMut(&str, &str),
    ) -> Result<Value, ClientError> {
        self.call_frames(method, params, Some(tty), &mut |_| {}, &mut on_output)
    }

    /// `container.run` (create, start, attach in one request): `on_created`
    /// gets what `container.create` returns as soon as the container
    /// exists, `on_output` its output; `stdin`: `Some(tty)` to attach this
    /// process's stdin (as [`Client::call_interactive`]).
    pub fn run(
        &self,
        params: Value,
        stdin: Option<bool>,
        mut on_created: impl FnMut(&Value),
        mut on_output: impl FnMut(&str, &str),
    ) -> Result<Value, ClientError> {
        self.call_frames(
            "container.run",
            params,
            stdin,
            &mut on_created,
            &mut on_output,
        )
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "; the socket is root-only (mode 0600): run husk as root".to_string()
                }
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "; is huskd running? (start it, or pass --socket/HUSK_SOCKET)".to_string()
                }
                _ => String::new(),
            };
            ClientError::Connect {
                socket: self.socket.clone(),
                source: e,
                hint,
            }
        })
    }

    /// One request and its frames; `stdin: Some(tty)` also sends this
    /// process's stdin (and, with `tty`, the terminal's size, the local
    /// terminal in raw mode for the call).
    fn call_frames(
        &self,
        method: &str,
        params: Value,
        stdin: Option<bool>,
        on_created: &mut dyn FnMut(&Value),
        on_output: &mut dyn FnMut(&str, &str),
    ) -> Result<Value, ClientError> {
        use crate::api::Input;
        let mut s = self.connect()?;
        let req = Request {
            api: API_VERSION,
            method: method.to_string(),
            params,
        };
        let mut line = serde_json::to_vec(&req).expect("a request serializes");
        line.push(b'\n');
        s.write_all(&line)?;
        let tty = stdin == Some(true);
        let raw = if tty { RawTerminal::enter() } else { None };
        if let Some(tty) = stdin {
            let mut w = s.try_clone()?;
            if tty {
                if let Some((width, height)) = terminal_size() {
                    let mut l = serde_json::to_vec(&Input::Resize { width, height }).unwrap();
                    l.push(b'\n');
                    w.write_all(&l)?;
                }
            }
            std::thread::spawn(move || {
                use std::io::Read;
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 8192];
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let frame = if n == 0 {
                        Input::CloseStdin
                    } else {
                        carry.extend_from_slice(&buf[..n]);
                        let cut = crate::logs::utf8_boundary(&carry);
                        let chunk: Vec<u8> = carry.drain(..cut).collect();
                        Input::Stdin {
                            data: String::from_utf8_lossy(&chunk).into_owned(),
                        }
                    };
                    let mut l = serde_json::to_vec(&frame).unwrap();
                    l.push(b'\n');
                    if w.write_all(&l).is_err() || n == 0 {
                        return;
                    }
                }
            });
        }
        let r = BufReader::new(s);
        let mut result = Err(ClientError::Protocol(
            "the connection closed before a result".into(),
        ));
        for l in r.lines() {
            let l = l?;
            match serde_json::from_str::<Frame>(&l).map_err(|_| ClientError::Protocol(l.clone()))? {
                Frame::Output { stream, data } => on_output(&stream, &data),
                Frame::Created { result } => on_created(&result),
                Frame::Ok { result: v } => {
                    result = Ok(v);
                    break;
                }
                Frame::Error { kind, message } => {
                    result = Err(ClientError::Api { kind, message });
                    break;
                }
            }
        }
        drop(raw);
        result
    }
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// (columns, rows) of the terminal on stdout or stdin.
fn terminal_size() -> Option<(u32, u32)> {
    for fd in [1, 0] {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col as u32, ws.ws_row as u32));
        }
    }
    None
}
