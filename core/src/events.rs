//! The ttrpc events endpoint shims publish to
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on the
//! `TTRPC_ADDRESS` huskd gives them). Events are logged and passed on to
//! subscribers; container exits themselves are tracked through the Task
//! API's Wait, which also survives a daemon restart.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::Empty;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use tokio::sync::broadcast;
use ttrpc::asynchronous::{Server, TtrpcContext};

use crate::error::{CoreError, Result};

/// One event: topic, namespace and the container id when known.
#[derive(Clone, Debug)]
pub struct Event {
    pub topic: String,
    pub namespace: String,
    pub type_url: String,
}

struct Service {
    tx: broadcast::Sender<Event>,
}

#[async_trait]
impl Events for Service {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        let ev = Event {
            topic: env.topic.clone(),
            namespace: env.namespace.clone(),
            type_url: env
                .event
                .as_ref()
                .map(|a| a.type_url.clone())
                .unwrap_or_default(),
        };
        tracing::debug!(topic = %ev.topic, namespace = %ev.namespace, r#type = %ev.type_url, "shim event");
        let _ = self.tx.send(ev);
        Ok(Empty::new())
    }
}

/// The running endpoint; dropping it stops serving.
pub struct EventsServer {
    _server: Server,
    pub tx: broadcast::Sender<Event>,
}

/// Serves the endpoint on `socket` (a stale socket file is replaced).
pub async fn serve(socket: &Path) -> Result<EventsServer> {
    let _ = std::fs::remove_file(socket);
    let (tx, _) = broadcast::channel(256);
    let svc = create_events(Arc::new(Service { tx: tx.clone() }));
    let addr = format!("unix://{}", socket.display());
    let mut server = Server::new()
        .bind(&addr)
        .map_err(|e| CoreError::Runtime(format!("binding the events endpoint {addr}: {e}")))?
        .register_service(svc);
    server
        .start()
        .await
        .map_err(|e| CoreError::Runtime(format!("serving the events endpoint {addr}: {e}")))?;
    Ok(EventsServer {
        _server: server,
        tx,
    })
}
