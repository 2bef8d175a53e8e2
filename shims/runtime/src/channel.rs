//! The runtime's conversation with its init process: length-prefixed JSON
//! messages over a unix socketpair, able to carry a file descriptor (the
//! console's pty master).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

pub struct Channel {
    stream: UnixStream,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Init(format!("{what} on the init channel: {e}"))
}

/// Writes all of `bytes` to the stream socket `sock`, passing `fd` (if
/// any) with the first byte, so the receiver gets it with the first read.
/// Also serves the shim's workers, which answer their daemon this way.
pub fn send_all_with_fd(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds
        .as_ref()
        .map(|f| ControlMessage::ScmRights(f))
        .into_iter()
        .collect();
    let mut sent = 0;
    while sent < bytes.len() {
        match sendmsg::<()>(
            sock,
            &[IoSlice::new(&bytes[sent..])],
            if sent == 0 { &cmsgs } else { &[] },
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Channel {
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = crate::sys::socketpair_stream().map_err(|e| io_err("socketpair", e))?;
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            stream: UnixStream::from(fd),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    /// Sends one message; the fd, if any, rides on the length header.
    pub fn send_with_fd<T: Serialize>(&mut self, msg: &T, fd: Option<RawFd>) -> Result<()> {
        let body = serde_json::to_vec(msg).map_err(|e| io_err("encode", e))?;
        let header = (body.len() as u32).to_le_bytes();
        send_all_with_fd(self.stream.as_raw_fd(), &header, fd).map_err(|e| io_err("send", e))?;
        self.stream.write_all(&body).map_err(|e| io_err("send", e))
    }

    /// Receives one message; `Ok(None)` when the peer closed its end.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Option<OwnedFd>)>> {
        let mut header = [0u8; 4];
        let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut header)];
            let msg = loop {
                match recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map_err(|e| io_err("receive", e))?,
                }
            };
            let mut fd = None;
            for c in msg.cmsgs().map_err(|e| io_err("receive", e))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        // SAFETY: the kernel just installed this descriptor for us.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            (msg.bytes, fd)
        };
        if n == 0 {
            return Ok(None);
        }
        if n < header.len() {
            self.stream
                .read_exact(&mut header[n..])
                .map_err(|e| io_err("receive", e))?;
        }
        let len = u32::from_le_bytes(header) as usize;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| io_err("receive", e))?;
        let msg = serde_json::from_slice(&body).map_err(|e| io_err("decode", e))?;
        Ok(Some((msg, fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_the_channel() {
        let (mut a, mut b) = Channel::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        a.send(&serde_json::json!({"hello": 1})).unwrap();
        a.send_with_fd(&"with-fd", Some(file.as_raw_fd())).unwrap();
        let (m, fd): (serde_json::Value, _) = b.recv().unwrap().unwrap();
        assert_eq!(m["hello"], 1);
        assert!(fd.is_none());
        let (m, fd): (String, _) = b.recv().unwrap().unwrap();
        assert_eq!(m, "with-fd");
        assert!(fd.is_some());
        drop(a);
        assert!(b.recv::<String>().unwrap().is_none());
    }
}
