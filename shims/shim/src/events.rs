//! Task events, published to containerd's ttrpc events service
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on
//! `TTRPC_ADDRESS`), or, when that fails, through `-publish-binary`
//! (`containerd --address ADDR publish --topic T --namespace NS`, the event
//! on stdin). One task sends them in order.
//!
//! For a live swap, [`Publisher::pause`] stops the sender between two
//! events (the one being sent is sent first) and [`Publisher::take_queued`]
//! hands what is still queued to the next binary, which sends it first:
//! every event is sent once, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use containerd_shim_protos::topics;

/// One event: topic plus the packed message.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub event: Any,
    pub timestamp: Timestamp,
}

/// An [`Event`] as the handover records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub topic: String,
    pub type_url: String,
    pub value: Vec<u8>,
    pub seconds: i64,
    pub nanos: i32,
}

impl From<&Event> for EventRecord {
    fn from(e: &Event) -> EventRecord {
        EventRecord {
            topic: e.topic.clone(),
            type_url: e.event.type_url.clone(),
            value: e.event.value.clone(),
            seconds: e.timestamp.seconds,
            nanos: e.timestamp.nanos,
        }
    }
}

impl From<EventRecord> for Event {
    fn from(r: EventRecord) -> Event {
        let mut event = Any::new();
        event.type_url = r.type_url;
        event.value = r.value;
        let mut timestamp = Timestamp::new();
        timestamp.seconds = r.seconds;
        timestamp.nanos = r.nanos;
        Event {
            topic: r.topic,
            event,
            timestamp,
        }
    }
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub ttrpc_address: String,
    pub containerd_address: String,
    pub publish_binary: String,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Set by [`Publisher::pause`]: nothing more is sent.
    paused: bool,
    /// An event is being sent now.
    sending: bool,
}

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the sender: an event was queued, or the pause was lifted.
    wake: Notify,
    /// Wakes a pause waiting for the event being sent.
    sent: Notify,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts the sender task on the current tokio runtime; `queued` (from
    /// a previous binary) goes first.
    pub fn spawn(target: Target, queued: Vec<Event>) -> Publisher {
        let inner = Arc::new(Inner::default());
        inner.lock().events.extend(queued);
        tokio::spawn(send_loop(target, Arc::clone(&inner)));
        Publisher { inner }
    }

    /// Queues `msg` under `topic`. Generic, not `&dyn MessageDyn`: the
    /// dynamic encoder checks the message through protobuf's reflection,
    /// whose first use parses and keeps the descriptors of the events'
    /// .proto files and of descriptor.proto (~360 kB of heap for the life
    /// of the shim).
    pub fn publish<M: protobuf::Message>(&self, topic: &'static str, msg: &M) {
        let mut any = Any::new();
        // containerd registers its events under these names.
        any.type_url = format!("containerd.events.{}", M::NAME);
        any.value = msg.write_to_bytes().unwrap_or_default();
        self.inner.lock().events.push_back(Event {
            topic: topic.into(),
            event: any,
            timestamp: now(),
        });
        self.inner.wake.notify_one();
    }

    /// Stops sending after the event being sent now (if any) is sent.
    /// Events published meanwhile are queued.
    pub async fn pause(&self) {
        loop {
            let sent = self.inner.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            {
                let mut q = self.inner.lock();
                q.paused = true;
                if !q.sending {
                    return;
                }
            }
            sent.await;
        }
    }

    /// Everything queued and not sent, oldest first; the queue is left
    /// empty. For the handover, after [`Publisher::pause`].
    pub fn take_queued(&self) -> Vec<Event> {
        self.inner.lock().events.drain(..).collect()
    }

    /// Undoes [`Publisher::pause`]; `front` (taken with
    /// [`Publisher::take_queued`]) is sent first.
    pub fn resume(&self, front: Vec<Event>) {
        {
            let mut q = self.inner.lock();
            for e in front.into_iter().rev() {
                q.events.push_front(e);
            }
            q.paused = false;
        }
        self.inner.wake.notify_one();
    }

    pub fn task_create(&self, e: ev::TaskCreate) {
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, &e);
    }
    pub fn task_start(&self, e: ev::TaskStart) {
        self.publish(topics::TASK_START_EVENT_TOPIC, &e);
    }
    pub fn task_exit(&self, e: ev::TaskExit) {
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, &e);
    }
    pub fn task_delete(&self, e: ev::TaskDelete) {
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, &e);
    }
    pub fn exec_added(&self, e: ev::TaskExecAdded) {
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, &e);
    }
    pub fn exec_started(&self, e: ev::TaskExecStarted) {
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, &e);
    }
    pub fn paused(&self, e: ev::TaskPaused) {
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, &e);
    }
    pub fn resumed(&self, e: ev::TaskResumed) {
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, &e);
    }
    pub fn oom(&self, e: ev::TaskOOM) {
        self.publish(topics::TASK_OOM_EVENT_TOPIC, &e);
    }
}

pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next event to send, once there is one and no pause.
    async fn next(&self) -> Event {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            {
                let mut q = self.lock();
                if !q.paused {
                    if let Some(e) = q.events.pop_front() {
                        q.sending = true;
                        return e;
                    }
                }
            }
            wake.await;
        }
    }

    fn done_sending(&self) {
        self.lock().sending = false;
        self.sent.notify_waiters();
    }
}

async fn send_loop(target: Target, inner: Arc<Inner>) {
    let mut client: Option<EventsClient> = None;
    loop {
        let event = inner.next().await;
        send(&target, &mut client, &event).await;
        inner.done_sending();
    }
}

async fn send(target: &Target, client: &mut Option<EventsClient>, event: &Event) {
    {
        let mut envelope = Envelope::new();
        envelope.timestamp = Some(event.timestamp.clone()).into();
        envelope.namespace = target.namespace.clone();
        envelope.topic = event.topic.clone();
        envelope.event = Some(event.event.clone()).into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(envelope).into();
        let mut sent = false;
        for _attempt in 0..2 {
            if client.is_none() {
                *client = connect(&target.ttrpc_address).await;
            }
            let Some(c) = client.as_ref() else { break };
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            match c.forward(ctx, &req).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(topic = %event.topic, "forwarding the event failed: {e}");
                    *client = None;
                }
            }
        }
        if !sent {
            publish_binary(target, event).await;
        }
    }
}

async fn connect(address: &str) -> Option<EventsClient> {
    if address.is_empty() {
        return None;
    }
    let address = if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    match ttrpc::asynchronous::Client::connect(&address).await {
        Ok(c) => Some(EventsClient::new(c)),
        Err(e) => {
            tracing::debug!(address, "cannot connect to the events service: {e}");
            None
        }
    }
}

async fn publish_binary(target: &Target, event: &Event) {
    if target.publish_binary.is_empty() {
        tracing::warn!(
            topic = %event.topic,
            "event dropped: no events service and no publish binary"
        );
        return;
    }
    let target = target.clone();
    let topic = event.topic.clone();
    let bytes = event.event.write_to_bytes().unwrap_or_default();
    // A child process: spawned and waited on a blocking thread, never on the
    // main thread (see reaper.rs).
    let result = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            use std::io::Write;
            let mut child = std::process::Command::new(&target.publish_binary)
                .args([
                    "--address",
                    &target.containerd_address,
                    "publish",
                    "--topic",
                    &topic,
                ])
                .args(["--namespace", &target.namespace])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(&bytes)?;
            }
            let out = child.wait_with_output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ))
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(topic = %topic, "event dropped: publish binary failed: {e}"),
        Err(e) => tracing::warn!(topic = %topic, "event dropped: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd decodes an event by its type URL: each must name the
    /// message under containerd's registration, and its bytes decode.
    #[test]
    fn events_are_packed_under_containerds_type_names() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let target = Target {
                namespace: "default".into(),
                ttrpc_address: "/nonexistent/ttrpc.sock".into(),
                containerd_address: "/nonexistent/grpc.sock".into(),
                publish_binary: "/nonexistent/containerd".into(),
            };
            let publisher = Publisher::spawn(target, Vec::new());
            publisher.pause().await;
            let mut create = ev::TaskCreate::new();
            create.container_id = "c1".into();
            publisher.task_create(create);
            let mut oom = ev::TaskOOM::new();
            oom.container_id = "c1".into();
            publisher.oom(oom);
            let queued = publisher.take_queued();
            let urls: Vec<&str> = queued.iter().map(|e| e.event.type_url.as_str()).collect();
            assert_eq!(
                urls,
                ["containerd.events.TaskCreate", "containerd.events.TaskOOM"]
            );
            assert_eq!(queued[0].topic, topics::TASK_CREATE_EVENT_TOPIC);
            let decoded = ev::TaskCreate::parse_from_bytes(&queued[0].event.value).unwrap();
            assert_eq!(decoded.container_id, "c1");
        });
    }
}
