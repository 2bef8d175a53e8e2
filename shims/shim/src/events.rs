//! Task events, published to containerd's ttrpc events service
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on
//! `TTRPC_ADDRESS`), or, when that fails, through `-publish-binary`
//! (`containerd --address ADDR publish --topic T --namespace NS`, the event
//! on stdin). One task sends them in order.

use std::time::Duration;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;
use tokio::sync::mpsc;

pub use containerd_shim_protos::topics;

/// One event: topic plus the packed message.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: &'static str,
    pub event: Any,
    pub timestamp: Timestamp,
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub ttrpc_address: String,
    pub containerd_address: String,
    pub publish_binary: String,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Event>,
}

impl Publisher {
    /// Starts the sender task on the current tokio runtime.
    pub fn spawn(target: Target) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(target, rx));
        Publisher { tx }
    }

    pub fn publish(&self, topic: &'static str, msg: &dyn protobuf::MessageDyn, name: &str) {
        let mut any = Any::new();
        // containerd registers its events under these names.
        any.type_url = format!("containerd.events.{name}");
        any.value = msg.write_to_bytes_dyn().unwrap_or_default();
        let _ = self.tx.send(Event {
            topic,
            event: any,
            timestamp: now(),
        });
    }

    pub fn task_create(&self, e: ev::TaskCreate) {
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, &e, "TaskCreate");
    }
    pub fn task_start(&self, e: ev::TaskStart) {
        self.publish(topics::TASK_START_EVENT_TOPIC, &e, "TaskStart");
    }
    pub fn task_exit(&self, e: ev::TaskExit) {
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, &e, "TaskExit");
    }
    pub fn task_delete(&self, e: ev::TaskDelete) {
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, &e, "TaskDelete");
    }
    pub fn exec_added(&self, e: ev::TaskExecAdded) {
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, &e, "TaskExecAdded");
    }
    pub fn exec_started(&self, e: ev::TaskExecStarted) {
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, &e, "TaskExecStarted");
    }
    pub fn paused(&self, e: ev::TaskPaused) {
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, &e, "TaskPaused");
    }
    pub fn resumed(&self, e: ev::TaskResumed) {
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, &e, "TaskResumed");
    }
    pub fn oom(&self, e: ev::TaskOOM) {
        self.publish(topics::TASK_OOM_EVENT_TOPIC, &e, "TaskOOM");
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

async fn send_loop(target: Target, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut client: Option<EventsClient> = None;
    while let Some(event) = rx.recv().await {
        let mut envelope = Envelope::new();
        envelope.timestamp = Some(event.timestamp.clone()).into();
        envelope.namespace = target.namespace.clone();
        envelope.topic = event.topic.into();
        envelope.event = Some(event.event.clone()).into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(envelope).into();
        let mut sent = false;
        for _attempt in 0..2 {
            if client.is_none() {
                client = connect(&target.ttrpc_address).await;
            }
            let Some(c) = &client else { break };
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            match c.forward(ctx, &req).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(topic = event.topic, "forwarding the event failed: {e}");
                    client = None;
                }
            }
        }
        if !sent {
            publish_binary(&target, &event).await;
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
            topic = event.topic,
            "event dropped: no events service and no publish binary"
        );
        return;
    }
    let target = target.clone();
    let topic = event.topic;
    let bytes = event.event.write_to_bytes().unwrap_or_default();
    // A child process: spawned and waited on a blocking thread, never on the
    // main thread (see reaper.rs).
    let result = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(&target.publish_binary)
            .args([
                "--address",
                &target.containerd_address,
                "publish",
                "--topic",
                topic,
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
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(topic, "event dropped: publish binary failed: {e}"),
        Err(e) => tracing::warn!(topic, "event dropped: {e}"),
    }
}
