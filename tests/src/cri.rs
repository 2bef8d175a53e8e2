//! A Kubernetes CRI client (`runtime.v1`, the API kubelet speaks) on a
//! containerd gRPC socket, for driving containerd's CRI plugin the way a
//! node does: RunPodSandbox, CreateContainer, StartContainer, ExecSync...
//!
//! The bindings are k8s-cri's (tonic over HTTP/2); [`CriClient`] connects
//! them to a unix socket and runs each call to completion on its own
//! current-thread tokio runtime, so tests stay synchronous. There is no
//! crictl on Debian 12; this is what replaces it.
//!
//! Also here: what a pod needs besides the client, the sandbox ("pause")
//! image built from busybox ([`sandbox_image`]), and pod and container
//! configs as kubelet would send them ([`host_network_pod`],
//! [`container`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::image::ImageBuilder;

pub use k8s_cri::v1 as api;
pub use tonic::{Code, Status};

/// The containerd namespace the CRI plugin keeps its images, containers
/// and tasks in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long one CRI call may take (RunPodSandbox starts a shim and the
/// sandbox container; StopContainer waits for the grace period it is given).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`CriClient::connect`] waits for the CRI plugin to initialize.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The annotation (and containerd label) holding a container's sandbox id:
/// the shim groups a pod's containers by it.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// A connected CRI client. See the module docs.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl CriClient {
    /// Connects to containerd's gRPC socket. Panics with the reason if the
    /// socket does not accept the connection.
    pub fn connect(socket: &Path) -> CriClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("building a tokio runtime for the CRI client: {e}"));
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://[::]:50051").timeout(CALL_TIMEOUT);
        let channel = rt
            .block_on(endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            })))
            .unwrap_or_else(|e| {
                panic!(
                    "connecting a CRI client to {}: {e} (is containerd running with the CRI plugin?)",
                    socket.display()
                )
            });
        let client = CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            socket: socket.to_path_buf(),
        };
        client.wait_initialized();
        client
    }

    /// Waits until the CRI plugin answers Version: it serves "server is not
    /// initialized yet" for a moment after containerd is up.
    fn wait_initialized(&self) {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let req = api::VersionRequest::default();
            match self.runtime(|mut c| async move { c.version(req).await }) {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() >= deadline => panic!(
                    "the CRI plugin on {} did not answer Version within {READY_TIMEOUT:?}: {e}",
                    self.socket.display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One call on the RuntimeService:
    /// `cri.runtime(|mut c| async move { c.version(req).await })`.
    pub fn runtime<T, F>(
        &self,
        call: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(call(self.runtime.clone()))
            .map(tonic::Response::into_inner)
    }

    /// One call on the ImageService, like [`CriClient::runtime`].
    pub fn image<T, F>(
        &self,
        call: impl FnOnce(ImageServiceClient<Channel>) -> F,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(call(self.images.clone()))
            .map(tonic::Response::into_inner)
    }

    /// The `pid` in a container's verbose ContainerStatus (the host pid of
    /// its init, as the shim reported it to containerd).
    pub fn container_pid(&self, id: &str) -> u32 {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let resp = self
            .runtime(|mut c| async move { c.container_status(req).await })
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
        pid_of_info(&resp.info).unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
    }

    /// The `pid` in a pod sandbox's verbose PodSandboxStatus (the host pid
    /// of the sandbox container's init).
    pub fn sandbox_pid(&self, id: &str) -> u32 {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let resp = self
            .runtime(|mut c| async move { c.pod_sandbox_status(req).await })
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        pid_of_info(&resp.info).unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
    }
}

/// The `pid` field of the JSON under `info` in a verbose status, as
/// containerd's CRI plugin writes it.
pub fn pid_of_info(info: &HashMap<String, String>) -> Result<u32, String> {
    let raw = info
        .get("info")
        .ok_or_else(|| format!("no \"info\" in the verbose status: {info:?}"))?;
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("verbose info is not JSON ({e}): {raw}"))?;
    v.get("pid")
        .and_then(serde_json::Value::as_u64)
        .filter(|&p| p > 0)
        .map(|p| p as u32)
        .ok_or_else(|| format!("no positive \"pid\" in the verbose info: {raw}"))
}

/// The sandbox ("pause") image: busybox whose command sleeps forever. The
/// CRI plugin runs it as each pod's first container, holding the pod's
/// shared namespaces; StopPodSandbox kills it with SIGKILL.
pub fn sandbox_image() -> ImageBuilder {
    ImageBuilder::busybox().cmd(&["/bin/sleep", "inf"])
}

/// The namespaces kubelet asks for in a `hostNetwork: true` pod, for the
/// sandbox and again for each container: the node's network (so no CNI
/// network is set up), the pod's IPC, and `pid`: [`NamespaceMode::Container`]
/// for a pid namespace per container, [`NamespaceMode::Pod`] to share the
/// sandbox's (`shareProcessNamespace: true`).
pub fn host_network_namespaces(pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod config as kubelet sends it for a `hostNetwork: true` pod
/// ([`host_network_namespaces`], a pid namespace per container).
pub fn host_network_pod(name: &str, log_directory: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        log_directory: log_directory.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces(NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config for a pod of [`host_network_pod`]: `image` running
/// `command` in the namespaces of [`host_network_namespaces`]`(pid)`, its
/// output logged to `<pod log_directory>/<name>.log` (CRI's log format).
pub fn container(name: &str, image: &str, command: &[&str], pid: NamespaceMode) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces(pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The messages of a CRI log file (`TIME STREAM TAG MESSAGE` lines), in
/// order, joined into lines of text per stream tag `F` (full) or `P`
/// (partial).
pub fn log_messages(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for line in log.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        partial.push_str(f.next().unwrap_or(""));
        if tag != "P" {
            out.push(std::mem::take(&mut partial));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_from_verbose_info() {
        let mut info = HashMap::new();
        info.insert(
            "info".to_string(),
            r#"{"pid": 4242, "sandboxID": "x"}"#.to_string(),
        );
        assert_eq!(pid_of_info(&info), Ok(4242));
        info.insert("info".to_string(), r#"{"pid": 0}"#.to_string());
        assert!(pid_of_info(&info).is_err());
        info.insert("info".to_string(), "not json".to_string());
        assert!(pid_of_info(&info).unwrap_err().contains("not JSON"));
        assert!(pid_of_info(&HashMap::new()).is_err());
    }

    #[test]
    fn log_lines_joined() {
        let log = "2024-01-01T00:00:00Z stdout P hel\n\
                   2024-01-01T00:00:00Z stdout F lo\n\
                   2024-01-01T00:00:01Z stderr F two words\n";
        assert_eq!(log_messages(log), vec!["hello", "two words"]);
    }
}
