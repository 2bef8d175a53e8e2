//! husk's own ttrpc server: the listener and every accepted connection
//! are the shim's, so a live swap can hand them to the next binary.
//!
//! The `ttrpc` crate's server owns its sockets and cannot adopt a
//! connection accepted by another process; containerd 1.6 treats a closed
//! shim connection as a dead shim (`ttrpc.WithOnClose` ->
//! `cleanupAfterDeadShim` -> `shim delete`, which kills the container). So
//! a swap must keep containerd's connection open across `execve`, and the
//! successor must go on reading it exactly where the old binary stopped.
//!
//! The wire format (containerd/ttrpc): a 10-byte header (length u32 BE,
//! stream id u32 BE, type u8, flags u8), then `length` bytes: a protobuf
//! `Request` (type 1) or `Response` (type 2). Requests are dispatched to
//! the method handlers that `ttrpc-codegen` generates
//! (`create_task(Arc<service>)`), each on its own task; responses are
//! written whole, under the connection's write lock.
//!
//! [`Server::quiesce`] stops at a frame boundary: no new connection is
//! accepted, no new frame is read (the next one stays in the socket for
//! the successor), and every request in flight is answered, except the
//! parkable ones (`Task.Wait`, which may wait for a container's whole
//! life): those are cancelled and recorded as [`Parked`] (the request's
//! bytes and stream id), and whoever serves next runs them again and
//! answers on the same stream. [`Server::resume`] undoes a quiesce (a swap
//! that did not happen); [`Server::serve`] starts on a listener and
//! adopted connections (a fresh shim, or a successor).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use ttrpc::proto::{
    Code, MessageHeader, Request, Response, Status, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX,
    MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use ttrpc::r#async::{Service, TtrpcContext};

/// The metadata key under which a handler finds the id of the connection
/// its request came on (clients cannot set it: it is replaced).
pub const CONN_ID_KEY: &str = "husk-conn-id";

/// Requests that may wait without end, cancelled and recorded at a
/// quiesce instead of awaited: `(service, method)`.
const PARKABLE: &[(&str, &str)] = &[("containerd.task.v2.Task", "Wait")];

/// A request cancelled by a quiesce, to be run again by whoever serves
/// the connection next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub stream_id: u32,
    /// The header of the request frame.
    pub flags: u8,
    /// The protobuf `Request` as it came off the wire.
    pub request: Vec<u8>,
}

/// A connection to adopt: its descriptor and its parked requests.
#[derive(Debug)]
pub struct Adopted {
    pub fd: OwnedFd,
    pub parked: Vec<Parked>,
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    stream: UnixStream,
    write: tokio::sync::Mutex<()>,
    parked: Mutex<Vec<Parked>>,
}

impl Conn {
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Why a connection's reader stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReaderEnd {
    /// At a frame boundary, for a quiesce: the connection is kept.
    Quiesced,
    /// The peer hung up or sent garbage: the connection is dropped.
    Closed,
}

/// What a quiesce leaves: everything needed to serve again, here or in
/// the successor.
#[derive(Debug)]
pub struct Quiesced {
    pub listener: std::os::unix::net::UnixListener,
    /// Open connections, in a stable order, with their parked requests.
    pub conns: Vec<(Arc<Conn>, Vec<Parked>)>,
}

impl Quiesced {
    /// The position of connection `id` in [`Quiesced::conns`].
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.conns.iter().position(|(c, _)| c.id == id)
    }
}

#[derive(Default)]
struct Tasks {
    accept: Option<JoinHandle<Option<std::os::unix::net::UnixListener>>>,
    readers: BTreeMap<u64, (Arc<Conn>, JoinHandle<ReaderEnd>)>,
}

/// The server. See the module docs.
pub struct Server {
    services: HashMap<String, Service>,
    tasks: Mutex<Tasks>,
    quiesce: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
    next_id: AtomicU64,
}

/// Decrements the in-flight count when a handler is done (or parked).
struct InFlight(Arc<Server>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Server {
    pub fn new(services: HashMap<String, Service>) -> Arc<Server> {
        Arc::new(Server {
            services,
            tasks: Mutex::default(),
            quiesce: watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Requests being handled now (parked ones and swap triggers not
    /// counted).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Starts serving `listener` and the adopted connections, running
    /// their parked requests again. Returns the adopted connections, in
    /// order.
    pub fn serve(
        self: &Arc<Self>,
        listener: OwnedFd,
        adopted: Vec<Adopted>,
    ) -> std::io::Result<Vec<Arc<Conn>>> {
        let listener = std::os::unix::net::UnixListener::from(listener);
        let mut conns = Vec::with_capacity(adopted.len());
        for a in adopted {
            conns.push((
                self.conn(std::os::unix::net::UnixStream::from(a.fd))?,
                a.parked,
            ));
        }
        let handles = conns.iter().map(|(c, _)| Arc::clone(c)).collect();
        self.resume(Quiesced { listener, conns })?;
        Ok(handles)
    }

    fn conn(&self, s: std::os::unix::net::UnixStream) -> std::io::Result<Arc<Conn>> {
        s.set_nonblocking(true)?;
        Ok(Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stream: UnixStream::from_std(s)?,
            write: tokio::sync::Mutex::new(()),
            parked: Mutex::default(),
        }))
    }

    /// Serves again after [`Server::quiesce`] (or for the first time).
    pub fn resume(self: &Arc<Self>, q: Quiesced) -> std::io::Result<()> {
        self.quiesce.send_replace(false);
        q.listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(q.listener)?;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.accept = Some(tokio::spawn(Arc::clone(self).accept_loop(listener)));
        for (conn, parked) in q.conns {
            for p in parked {
                self.redispatch(&conn, p);
            }
            let reader = tokio::spawn(Arc::clone(self).read_loop(Arc::clone(&conn)));
            tasks.readers.insert(conn.id, (conn, reader));
        }
        Ok(())
    }

    /// Stops at a frame boundary and waits (up to `deadline`) for every
    /// request in flight to be answered. On failure the server serves on
    /// (parked requests run again) and the error says what was busy.
    pub async fn quiesce(self: &Arc<Self>, deadline: Duration) -> Result<Quiesced, String> {
        let until = tokio::time::Instant::now() + deadline;
        self.quiesce.send_replace(true);
        let (accept, readers) = {
            let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            (t.accept.take(), std::mem::take(&mut t.readers))
        };
        // The acceptor stops at once (it never blocks between accepts).
        let listener = match accept {
            Some(h) => h.await.ok().flatten(),
            None => None,
        };
        let mut stopped = Vec::new();
        let mut running = Vec::new();
        let mut failure = None;
        for (_, (conn, mut reader)) in readers {
            if failure.is_some() {
                running.push((conn, reader));
                continue;
            }
            match tokio::time::timeout_at(until, &mut reader).await {
                Ok(Ok(ReaderEnd::Quiesced)) => stopped.push(conn),
                Ok(_) => {} // hung up meanwhile
                Err(_) => {
                    failure = Some("a client stayed in the middle of a frame".to_string());
                    running.push((conn, reader));
                }
            }
        }
        if failure.is_none() {
            // Every reader has stopped: no new request can start.
            let idle = async {
                loop {
                    let idle = self.idle.notified();
                    tokio::pin!(idle);
                    idle.as_mut().enable();
                    if self.in_flight() == 0 {
                        return;
                    }
                    idle.await;
                }
            };
            if tokio::time::timeout_at(until, idle).await.is_err() {
                failure = Some(format!(
                    "{} request(s) were still running",
                    self.in_flight()
                ));
            }
        }
        if listener.is_none() && failure.is_none() {
            failure = Some("the listening socket is gone".into());
        }
        let conns: Vec<(Arc<Conn>, Vec<Parked>)> = stopped
            .into_iter()
            .map(|c| {
                let parked =
                    std::mem::take(&mut *c.parked.lock().unwrap_or_else(|p| p.into_inner()));
                (c, parked)
            })
            .collect();
        let Some(why) = failure else {
            let listener = listener.expect("checked above");
            return Ok(Quiesced { listener, conns });
        };
        // Serve on, with everything that stopped.
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .readers
            .extend(running.into_iter().map(|(c, r)| (c.id, (c, r))));
        match listener {
            Some(listener) => {
                if let Err(e) = self.resume(Quiesced { listener, conns }) {
                    tracing::error!("serving again after a failed quiesce: {e}");
                }
            }
            None => {
                self.quiesce.send_replace(false);
                let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
                for (conn, parked) in conns {
                    for p in parked {
                        self.spawn_request(Arc::clone(&conn), p);
                    }
                    let reader = tokio::spawn(Arc::clone(self).read_loop(Arc::clone(&conn)));
                    t.readers.insert(conn.id, (conn, reader));
                }
            }
        }
        Err(format!(
            "the shim could not reach a quiet point within {deadline:?}: {why}; it serves on unchanged, try again"
        ))
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: UnixListener,
    ) -> Option<std::os::unix::net::UnixListener> {
        let mut quiesce = self.quiesce.subscribe();
        loop {
            if *quiesce.borrow_and_update() {
                return listener.into_std().ok();
            }
            tokio::select! {
                biased;
                _ = quiesce.changed() => continue,
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let conn = match stream.into_std().and_then(|s| self.conn(s)) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!("accepting a connection: {e}");
                                continue;
                            }
                        };
                        let reader = tokio::spawn(Arc::clone(&self).read_loop(Arc::clone(&conn)));
                        self.tasks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .readers
                            .insert(conn.id, (conn, reader));
                    }
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn read_loop(self: Arc<Self>, conn: Arc<Conn>) -> ReaderEnd {
        let end = self.read_frames(&conn).await;
        if end == ReaderEnd::Closed {
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .readers
                .remove(&conn.id);
        }
        end
    }

    async fn read_frames(self: &Arc<Self>, conn: &Arc<Conn>) -> ReaderEnd {
        let mut quiesce = self.quiesce.subscribe();
        loop {
            if *quiesce.borrow_and_update() {
                return ReaderEnd::Quiesced;
            }
            tokio::select! {
                biased;
                _ = quiesce.changed() => continue,
                r = conn.stream.readable() => if r.is_err() { return ReaderEnd::Closed },
            }
            // Readiness can be spurious: nothing is consumed until a read
            // returns bytes, and from then on the whole frame is read.
            let mut header = [0u8; MESSAGE_HEADER_LENGTH];
            let n = match conn.stream.try_read(&mut header) {
                Ok(0) => return ReaderEnd::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return ReaderEnd::Closed,
            };
            if read_full(&conn.stream, &mut header[n..]).await.is_err() {
                return ReaderEnd::Closed;
            }
            let header = MessageHeader::from(&header);
            if header.length as usize > MESSAGE_LENGTH_MAX {
                // The body cannot be skipped cheaply: answer and hang up.
                let status = ttrpc::get_status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "message length {} exceeds the maximum message size of {MESSAGE_LENGTH_MAX}",
                        header.length
                    ),
                );
                respond_status(conn, header.stream_id, status).await;
                return ReaderEnd::Closed;
            }
            let mut payload = vec![0u8; header.length as usize];
            if read_full(&conn.stream, &mut payload).await.is_err() {
                return ReaderEnd::Closed;
            }
            self.dispatch(conn, header, payload);
        }
    }

    fn dispatch(self: &Arc<Self>, conn: &Arc<Conn>, header: MessageHeader, payload: Vec<u8>) {
        let conn = Arc::clone(conn);
        let stream_id = header.stream_id;
        if header.type_ != MESSAGE_TYPE_REQUEST {
            // No streaming method is served: data frames have no stream.
            tokio::spawn(async move {
                let s = ttrpc::get_status(Code::INVALID_ARGUMENT, "stream is no longer active");
                respond_status(&conn, stream_id, s).await;
            });
            return;
        }
        self.spawn_request(
            conn,
            Parked {
                stream_id,
                flags: header.flags,
                request: payload,
            },
        );
    }

    fn redispatch(self: &Arc<Self>, conn: &Arc<Conn>, p: Parked) {
        tracing::debug!(
            conn = conn.id,
            stream = p.stream_id,
            "running a parked request again"
        );
        self.spawn_request(Arc::clone(conn), p);
    }

    /// Counts the request in flight at once (before its task runs), so a
    /// quiesce that sees no request in flight really has none coming.
    fn spawn_request(self: &Arc<Self>, conn: Arc<Conn>, frame: Parked) {
        let req = Request::parse_from_bytes(&frame.request);
        let swap_trigger = req.as_ref().is_ok_and(|r| {
            r.service == husk_shim_api::SERVICE && r.method == husk_shim_api::UPGRADE_METHOD
        });
        // A swap trigger waits for the quiesce it starts: it is not counted.
        let in_flight = (!swap_trigger).then(|| {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            InFlight(Arc::clone(self))
        });
        let server = Arc::clone(self);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            server.handle(conn, frame, req).await
        });
    }

    async fn handle(
        self: Arc<Self>,
        conn: Arc<Conn>,
        frame: Parked,
        req: protobuf::Result<Request>,
    ) {
        let stream_id = frame.stream_id;
        if stream_id % 2 != 1 {
            let s = ttrpc::get_status(Code::INVALID_ARGUMENT, "stream id must be odd");
            return respond_status(&conn, stream_id, s).await;
        }
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                let s = ttrpc::get_status(Code::INVALID_ARGUMENT, format!("bad request: {e}"));
                return respond_status(&conn, stream_id, s).await;
            }
        };
        let parkable = PARKABLE
            .iter()
            .any(|(s, m)| req.service == *s && req.method == *m);
        let Some(service) = self.services.get(&req.service) else {
            let s = ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!("{} service does not exist", req.service),
            );
            return respond_status(&conn, stream_id, s).await;
        };
        let Some(method) = service.methods.get(&req.method) else {
            let s = ttrpc::get_status(Code::UNIMPLEMENTED, format!("{} method", req.method));
            return respond_status(&conn, stream_id, s).await;
        };
        let mut metadata = ttrpc::context::from_pb(&req.metadata);
        metadata.insert(CONN_ID_KEY.into(), vec![conn.id.to_string()]);
        let timeout_nano = req.timeout_nano;
        let ctx = TtrpcContext {
            mh: MessageHeader {
                length: frame.request.len() as u32,
                stream_id,
                type_: MESSAGE_TYPE_REQUEST,
                flags: frame.flags,
            },
            metadata,
            timeout_nano,
        };
        let call = async {
            let call = method.handler(ctx, req);
            if timeout_nano > 0 {
                match tokio::time::timeout(Duration::from_nanos(timeout_nano as u64), call).await {
                    Ok(r) => r,
                    Err(_) => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                        Code::DEADLINE_EXCEEDED,
                        "timeout",
                    ))),
                }
            } else {
                call.await
            }
        };
        let result = if parkable {
            let mut quiesce = self.quiesce.subscribe();
            tokio::select! {
                r = call => r,
                _ = quiesce.wait_for(|q| *q) => {
                    conn.parked.lock().unwrap_or_else(|p| p.into_inner()).push(frame);
                    return;
                }
            }
        } else {
            call.await
        };
        let resp = match result {
            Ok(r) => r,
            Err(ttrpc::Error::RpcStatus(s)) => status_response(s),
            Err(e) => status_response(ttrpc::get_status(Code::UNKNOWN, e.to_string())),
        };
        respond(&conn, stream_id, &resp).await;
    }
}

fn status_response(s: Status) -> Response {
    let mut r = Response::new();
    r.set_status(s);
    r
}

async fn respond_status(conn: &Conn, stream_id: u32, status: Status) {
    respond(conn, stream_id, &status_response(status)).await
}

/// Writes one response frame. A peer that left is not an error here.
pub async fn respond(conn: &Conn, stream_id: u32, resp: &Response) {
    let payload = match resp.write_to_bytes() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("encoding a response: {e}");
            return;
        }
    };
    let header = MessageHeader {
        length: payload.len() as u32,
        stream_id,
        type_: MESSAGE_TYPE_RESPONSE,
        flags: 0,
    };
    let mut frame: Vec<u8> = header.into();
    frame.extend_from_slice(&payload);
    let _guard = conn.write.lock().await;
    if let Err(e) = write_all(&conn.stream, &frame).await {
        tracing::debug!(conn = conn.id, "writing a response: {e}");
    }
}

/// A response with a payload, for handlers that answer outside a handler
/// (the successor answering a swap's `Upgrade`).
pub fn ok_response(payload: Vec<u8>) -> Response {
    let mut r = Response::new();
    r.set_status(ttrpc::get_status(Code::OK, ""));
    r.payload = payload;
    r
}

/// An error response.
pub fn error_response(code: Code, message: impl ToString) -> Response {
    status_response(ttrpc::get_status(code, message))
}

async fn read_full(stream: &UnixStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::api;
    use containerd_shim_protos::shim_async::{create_task, Task, TaskClient};

    /// State answers; Wait blocks until `release` is notified.
    struct Fake {
        release: Arc<Notify>,
        waits: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Task for Fake {
        async fn state(
            &self,
            _: &TtrpcContext,
            r: api::StateRequest,
        ) -> ttrpc::Result<api::StateResponse> {
            if r.id == "slow" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(api::StateResponse {
                id: r.id,
                ..Default::default()
            })
        }
        async fn wait(
            &self,
            _: &TtrpcContext,
            _: api::WaitRequest,
        ) -> ttrpc::Result<api::WaitResponse> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
            Ok(api::WaitResponse {
                exit_status: 7,
                ..Default::default()
            })
        }
    }

    fn socket() -> (tempfile_dir::Dir, std::path::PathBuf) {
        let d = tempfile_dir::Dir::new();
        let p = d.0.join("s.sock");
        (d, p)
    }

    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "husk-ttrpc-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn ctx() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(5_000_000_000)
    }

    /// A State call for container `id`, in flight on its own task.
    fn spawn_state(
        client: &TaskClient,
        id: &str,
    ) -> tokio::task::JoinHandle<ttrpc::Result<api::StateResponse>> {
        let (client, id) = (client.clone(), id.to_string());
        tokio::spawn(async move {
            client
                .state(
                    ctx(),
                    &api::StateRequest {
                        id,
                        ..Default::default()
                    },
                )
                .await
        })
    }

    /// A quiesce answers what is in flight, parks Wait, keeps the
    /// connection; a second server adopts the connection and answers the
    /// parked Wait on the same stream.
    #[tokio::test(flavor = "current_thread")]
    async fn quiesce_parks_wait_and_a_new_server_adopts_the_connection() {
        let (_d, path) = socket();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let release = Arc::new(Notify::new());
        let fake = Arc::new(Fake {
            release: release.clone(),
            waits: AtomicUsize::new(0),
        });
        let a = Server::new(create_task(fake.clone()));
        a.serve(listener.into(), vec![]).unwrap();

        let client = TaskClient::new(
            ttrpc::asynchronous::Client::connect(&format!("unix://{}", path.display()))
                .await
                .unwrap(),
        );
        let st = client
            .state(
                ctx(),
                &api::StateRequest {
                    id: "x".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(st.id, "x");
        let waiter = {
            let c = client.clone();
            tokio::spawn(async move {
                c.wait(
                    ttrpc::context::Context::default(),
                    &api::WaitRequest::default(),
                )
                .await
            })
        };
        let slow = spawn_state(&client, "slow");
        while fake.waits.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let q = a.quiesce(Duration::from_secs(5)).await.unwrap();
        // The slow State was answered before the quiesce returned.
        assert!(slow.is_finished() || slow.await.is_ok());
        assert_eq!(q.conns.len(), 1);
        assert_eq!(q.conns[0].1.len(), 1, "the Wait is parked");
        // A request sent now stays in the socket until someone serves.
        let later = spawn_state(&client, "later");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!later.is_finished());
        // Hand everything to a second server, as a successor would.
        let adopted = q
            .conns
            .into_iter()
            .map(|(c, parked)| Adopted {
                fd: nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(c.raw_fd()) })
                    .unwrap(),
                parked,
            })
            .collect();
        let listener = q.listener;
        let b = Server::new(create_task(fake.clone()));
        b.serve(listener.into(), adopted).unwrap();
        assert_eq!(later.await.unwrap().unwrap().id, "later");
        while fake.waits.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.notify_waiters();
        assert_eq!(waiter.await.unwrap().unwrap().exit_status, 7);
    }
}
