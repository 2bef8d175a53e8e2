//! The API server: JSON lines on a unix socket (see [`crate::api`] and
//! docs/api.md). One request per connection; each connection is a task.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::api::{CreateParams, Frame, Input, Request, API_VERSION};
use crate::containers::Manager;
use crate::error::{CoreError, IoContext, Result};
use crate::images::ImportOptions;
use crate::volumes::VolumeInfo;

/// Binds the API socket with `mode` (0600: root only).
pub fn bind(socket: &Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {
            return Err(CoreError::Conflict(format!(
                "another huskd is serving {}",
                socket.display()
            )))
        }
        Err(_) => {
            let _ = std::fs::remove_file(socket);
        }
    }
    // The socket is created with the umask's mode; keep it closed until
    // the chmod below.
    // SAFETY: umask only swaps the process's file mode mask; a file another
    // thread creates meanwhile gets at most a stricter mode.
    let old = unsafe { libc::umask(0o177) };
    let l = std::os::unix::net::UnixListener::bind(socket);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.ctx(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", socket.display()))?;
    l.set_nonblocking(true)
        .ctx(|| "making the socket non-blocking".into())?;
    UnixListener::from_std(l).ctx(|| "registering the socket".into())
}

/// Serves until the process ends.
pub async fn serve(listener: UnixListener, m: Arc<Manager>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let m = m.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, m).await {
                        tracing::debug!(%e, "connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(%e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, m: Arc<Manager>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    // Input frames after the request line (stdin, resize); the channel
    // closes when the client closes its side or leaves.
    let (in_tx, inbox) = mpsc::channel::<Input>(64);
    let input_task = tokio::spawn(async move {
        let mut lines = reader.lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<Input>(&l) {
                Ok(f) => {
                    if in_tx.send(f).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(%e, "ignoring a client line that is not an input frame"),
            }
        }
    });
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let worker = tokio::spawn(async move {
        let last = match serde_json::from_str::<Request>(&line) {
            Err(e) => Frame::Error {
                kind: "bad_request".into(),
                message: format!("the request is not valid JSON: {e}"),
            },
            Ok(req) if req.api != API_VERSION => Frame::Error {
                kind: "bad_request".into(),
                message: format!(
                    "API version {} is not served here; this huskd speaks version {API_VERSION}",
                    req.api
                ),
            },
            Ok(req) => match dispatch(&m, &req.method, req.params, &tx, inbox).await {
                Ok(result) => Frame::Ok { result },
                Err(e) => Frame::Error {
                    kind: e.kind().into(),
                    message: e.to_string(),
                },
            },
        };
        let _ = tx.send(last).await;
    });
    while let Some(f) = rx.recv().await {
        let mut b = serde_json::to_vec(&f).expect("a frame serializes");
        b.push(b'\n');
        if w.write_all(&b).await.is_err() {
            // The client left; a streaming method stops at its next send.
            break;
        }
    }
    drop(rx);
    let _ = worker.await;
    input_task.abort();
    Ok(())
}

fn params<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v)
        .map_err(|e| CoreError::InvalidArgument(format!("bad parameters: {e}")))
}

#[derive(Deserialize)]
struct Key {
    id: String,
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| CoreError::Internal(e.to_string()))
}

async fn dispatch(
    m: &Arc<Manager>,
    method: &str,
    p: Value,
    out: &mpsc::Sender<Frame>,
    inbox: mpsc::Receiver<Input>,
) -> Result<Value> {
    match method {
        "version" => Ok(json!({"api": API_VERSION, "version": env!("CARGO_PKG_VERSION")})),
        "shim.list" => {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct P {
                spares: bool,
            }
            let p: P = params(p)?;
            to_value(crate::shims::list(m, p.spares).await)
        }
        "shim.upgrade" => to_value(crate::shims::upgrade(m, params(p)?).await?),
        "image.import" => {
            #[derive(Deserialize)]
            struct P {
                path: String,
                name: Option<String>,
            }
            let p: P = params(p)?;
            let images = m.images.clone();
            let r = blocking(move || {
                let opts = ImportOptions {
                    name: p.name,
                    ..Default::default()
                };
                Ok(images.import(Path::new(&p.path), &opts)?)
            })
            .await?;
            to_value(r)
        }
        "image.list" => {
            let images = m.images.clone();
            to_value(blocking(move || Ok(images.list()?)).await?)
        }
        "image.inspect" => {
            let p: Name = params(p)?;
            let images = m.images.clone();
            to_value(blocking(move || Ok(images.inspect(&p.name)?)).await?)
        }
        "image.remove" => {
            let p: Name = params(p)?;
            let (images, spares) = (m.images.clone(), m.spares.clone());
            blocking(move || {
                images.remove(&p.name)?;
                // No spare's rootfs mounted ahead keeps its layers.
                spares.forget_rootfs();
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "image.prune" => {
            let images = m.images.clone();
            to_value(blocking(move || Ok(images.prune()?)).await?)
        }
        "container.create" => create(m, params(p)?).await,
        "plugin.install" => {
            let p: crate::plugins::InstallParams = params(p)?;
            let m = m.clone();
            to_value(blocking(move || m.plugins.install(&p)).await?)
        }
        "plugin.list" => {
            let m = m.clone();
            to_value(blocking(move || m.plugins.list()).await?)
        }
        "plugin.remove" => {
            let p: Name = params(p)?;
            let m = m.clone();
            to_value(blocking(move || m.plugins.remove(&p.name)).await?)
        }
        "plugin.test" => {
            #[derive(Deserialize)]
            struct P {
                name: String,
                spec: Option<Value>,
                image: Option<String>,
            }
            let p: P = params(p)?;
            let m = m.clone();
            blocking(move || {
                let (spec, image) = match (p.spec, p.image) {
                    (Some(spec), None) => (spec, String::new()),
                    (None, Some(image)) => {
                        let img = m.images.inspect(&image)?;
                        (crate::spec_builder::preview(&img)?, img.name)
                    }
                    _ => {
                        return Err(CoreError::InvalidArgument(
                            "plugin.test needs exactly one of spec and image".into(),
                        ))
                    }
                };
                m.plugins.test(&p.name, &spec, &image)
            })
            .await
        }
        "container.start" => {
            #[derive(Deserialize)]
            struct P {
                id: String,
                #[serde(default)]
                attach: bool,
            }
            let p: P = params(p)?;
            if !p.attach {
                let c = m.start(&p.id).await?;
                m.refill_spare(&c);
                return to_value(c.record().summary());
            }
            start_attached(m, &p.id, out, inbox).await
        }
        "container.run" => {
            // `container.create`, then `container.start` with `attach`, in
            // one request: no round trip through the client in between.
            let p: CreateParams = params(p)?;
            let created = create(m, p).await?;
            let id = created["id"].as_str().unwrap_or_default().to_string();
            let _ = out.send(Frame::Created { result: created }).await;
            start_attached(m, &id, out, inbox).await
        }
        "container.list" => {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct P {
                all: bool,
            }
            let p: P = params(p)?;
            to_value(m.list(p.all))
        }
        "container.inspect" => {
            let p: Key = params(p)?;
            to_value(m.get(&p.id)?.record())
        }
        "container.logs" => {
            #[derive(Deserialize)]
            struct P {
                id: String,
                #[serde(default)]
                follow: bool,
            }
            let p: P = params(p)?;
            let c = m.get(&p.id)?;
            let file =
                crate::logs::open_log(&m.layout.container_dir(&c.id).join("log.jsonl")).await?;
            if p.follow {
                let live = c.log_sink().map(|s| s.subscribe());
                follow(&c, file, live, out).await?;
            } else {
                crate::logs::stream_log(file, None, out).await?;
            }
            Ok(json!({}))
        }
        "container.stop" => {
            #[derive(Deserialize)]
            struct P {
                id: String,
                #[serde(default = "ten")]
                timeout: u64,
            }
            fn ten() -> u64 {
                10
            }
            let p: P = params(p)?;
            let code = m.stop(&p.id, Duration::from_secs(p.timeout)).await?;
            Ok(json!({"exit_code": code}))
        }
        "container.kill" => {
            #[derive(Deserialize)]
            struct P {
                id: String,
                #[serde(default)]
                signal: Option<String>,
            }
            let p: P = params(p)?;
            let sig = parse_signal(p.signal.as_deref().unwrap_or("KILL"))?;
            m.kill(&p.id, sig).await?;
            Ok(json!({}))
        }
        "container.remove" => {
            #[derive(Deserialize)]
            struct P {
                id: String,
                #[serde(default)]
                force: bool,
            }
            let p: P = params(p)?;
            m.remove(&p.id, p.force).await?;
            Ok(json!({}))
        }
        "container.wait" => {
            let p: Key = params(p)?;
            let c = m.get(&p.id)?;
            Ok(json!({"exit_code": c.wait_exit().await}))
        }
        "container.exec" => {
            let p: crate::containers::ExecParams = params(p)?;
            let code = m.exec(p, out, inbox).await?;
            Ok(json!({"exit_code": code}))
        }
        "container.stats" => {
            let p: Key = params(p)?;
            to_value(m.stats(&p.id).await?)
        }
        "container.top" => {
            let p: Key = params(p)?;
            to_value(json!({"pids": m.pids(&p.id).await?}))
        }
        "volume.create" => {
            let p: Name = params(p)?;
            let path = m.volumes.create(&p.name)?;
            to_value(VolumeInfo {
                name: p.name,
                mountpoint: path,
                used_by: vec![],
            })
        }
        "volume.list" | "volume.inspect" => {
            let names = if method == "volume.list" {
                m.volumes.list()?
            } else {
                let p: Name = params(p)?;
                if !m.volumes.exists(&p.name) {
                    return Err(CoreError::NotFound(format!("no volume named {:?}", p.name)));
                }
                vec![p.name]
            };
            let infos: Vec<VolumeInfo> = names
                .into_iter()
                .map(|n| VolumeInfo {
                    mountpoint: m.volumes.data_path(&n),
                    used_by: m.volume_users(&n),
                    name: n,
                })
                .collect();
            if method == "volume.inspect" {
                to_value(&infos[0])
            } else {
                to_value(infos)
            }
        }
        "volume.remove" => {
            let p: Name = params(p)?;
            let users = m.volume_users(&p.name);
            if !users.is_empty() {
                return Err(CoreError::Conflict(format!(
                    "volume {:?} is in use by {}: remove those containers first",
                    p.name,
                    users.join(", ")
                )));
            }
            m.volumes.remove(&p.name)?;
            Ok(json!({}))
        }
        _ => Err(CoreError::InvalidArgument(format!(
            "unknown method {method:?}; docs/api.md lists the methods"
        ))),
    }
}

/// `container.create`: the summary, and what policy plugins recorded.
async fn create(m: &Arc<Manager>, p: CreateParams) -> Result<Value> {
    let summary = m.create(p).await?;
    let policy = m.policy_record(&summary.id);
    let mut v = to_value(summary)?;
    if let Some(policy) = policy {
        v["policy"] = policy;
    }
    Ok(v)
}

/// Starts a created container with its output (and the client's input)
/// attached; returns once it exited (with `--rm`, once it is gone).
async fn start_attached(
    m: &Arc<Manager>,
    id: &str,
    out: &mpsc::Sender<Frame>,
    inbox: mpsc::Receiver<Input>,
) -> Result<Value> {
    // The log is opened and its capture subscribed before the start, so a
    // fast container's output (and its removal with --rm) cannot outrun
    // the client.
    let c = m.get(id)?;
    let file = crate::logs::open_log(&m.layout.container_dir(&c.id).join("log.jsonl")).await?;
    let live = c.log_sink().map(|s| s.subscribe());
    let c = m.start(id).await?;
    m.attach_input(&c, inbox);
    follow(&c, file, live, out).await?;
    let code = c.wait_exit().await;
    if c.record().params.auto_remove {
        // `run --rm` returns once the container is gone.
        let _ = tokio::time::timeout(Duration::from_secs(60), c.wait_settled()).await;
    }
    m.refill_spare(&c);
    Ok(json!({"id": c.id, "exit_code": code}))
}

/// Streams a container's log until its output ends. Without a live
/// capture (it exited, or its exit is being processed), the exit is
/// awaited first: it is recorded only after the output was drained.
async fn follow(
    c: &crate::containers::Container,
    file: Option<tokio::fs::File>,
    live: Option<tokio::sync::watch::Receiver<(u64, bool)>>,
    out: &mpsc::Sender<Frame>,
) -> Result<()> {
    if live.is_none() {
        c.wait_exit().await;
    }
    crate::logs::stream_log(file, live, out).await
}

/// `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as u32)
        .map_err(|_| CoreError::InvalidArgument(format!("unknown signal {s:?}")))
}
