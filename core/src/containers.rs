//! Containers: create (image rootfs, spec, bundle, shim start, Create),
//! start, stop, kill, rm, wait; a monitor per container that waits for its
//! exit over the Task API; and the recovery of a restarted daemon.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::types::task::Status as TaskStatus;
use tokio::sync::watch;

use crate::api::{ContainerSummary, CreateParams, Status};
use crate::error::{CoreError, IoContext, Result};
use crate::images::{ImageStore, UpperSync};
use crate::logs::{self, LogSink};
use crate::plugins::PluginStore;
use crate::shim_client::{self, Runtimes, ShimLauncher};
use crate::spares::{self, Spare, Spares};
use crate::spec_builder::{self, BindMount};
use crate::state::{self, ContainerRecord, Layout};
use crate::volumes::{self, VolumeSource, Volumes};

/// One container in memory.
pub struct Container {
    pub id: String,
    rec: Mutex<ContainerRecord>,
    /// Serializes lifecycle changes (start, exit handling, removal).
    op: tokio::sync::Mutex<()>,
    client: Mutex<Option<TaskClient>>,
    /// `Some(code)` once it has exited.
    exit: watch::Sender<Option<i32>>,
    log: Mutex<Option<Arc<LogSink>>>,
    shim_log: Mutex<Option<logs::ShimLog>>,
    /// Set once the exit was fully handled, including `--rm`'s removal.
    settled: watch::Sender<bool>,
}

impl Container {
    fn new(rec: ContainerRecord) -> Arc<Container> {
        let exit = if rec.status == Status::Stopped {
            Some(rec.exit_code.unwrap_or(-1))
        } else {
            None
        };
        Arc::new(Container {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            client: Mutex::new(None),
            exit: watch::channel(exit).0,
            log: Mutex::new(None),
            shim_log: Mutex::new(None),
            settled: watch::channel(exit.is_some()).0,
        })
    }

    pub fn record(&self) -> ContainerRecord {
        self.rec.lock().unwrap().clone()
    }

    fn client(&self) -> Option<TaskClient> {
        self.client.lock().unwrap().clone()
    }

    pub fn log_sink(&self) -> Option<Arc<LogSink>> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the exit was fully handled (with `--rm`, removed).
    pub async fn wait_settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits for the exit; the code.
    pub async fn wait_exit(&self) -> i32 {
        let mut rx = self.exit.subscribe();
        let r = rx.wait_for(|e| e.is_some()).await;
        match r {
            Ok(v) => v.unwrap_or(-1),
            Err(_) => -1,
        }
    }
}

/// Everything huskd manages.
pub struct Manager {
    pub layout: Layout,
    pub images: ImageStore,
    pub volumes: Volumes,
    pub runtimes: Runtimes,
    pub launcher: ShimLauncher,
    pub plugins: PluginStore,
    pub spares: Arc<Spares>,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    /// `--rm` containers unlisted at their exit whose removal is under way.
    removing: Mutex<BTreeMap<String, Arc<Container>>>,
}

/// A `--rm` container's writable layer goes with it: nothing in it needs
/// syncing, and a synced overlay's unmount syncs the whole upper
/// filesystem (tens to hundreds of ms on a busy disk).
fn upper_sync(auto_remove: bool) -> UpperSync {
    if auto_remove {
        UpperSync::Volatile
    } else {
        UpperSync::Synced
    }
}

/// How long after a create the next spare shim is started at the latest
/// (a detached start or the end of an attached run starts it earlier).
const REFILL_AFTER: Duration = Duration::from_millis(100);

/// Where husk-plugind records what a container's policy plugins decided,
/// in its bundle (`husk_plugin_client::protocol::DECISION_FILE`).
pub const POLICY_RECORD: &str = "husk-policy.json";

fn log_path(layout: &Layout, id: &str) -> PathBuf {
    layout.container_dir(id).join("log.jsonl")
}

impl Manager {
    /// `plugin_config`: a plugin config the operator maintains by hand;
    /// `None` for the plugins installed with `husk plugin install`.
    /// `spare_shims`: whether to keep a spare shim ready ([`crate::spares`]).
    pub fn new(
        layout: Layout,
        runtimes: Runtimes,
        launcher: ShimLauncher,
        plugin_config: Option<PathBuf>,
        spare_shims: bool,
    ) -> Result<Arc<Manager>> {
        layout.create()?;
        let plugins = PluginStore::new(layout.root.join("plugins"), plugin_config);
        let images = ImageStore::open(layout.images())?;
        let volumes = Volumes::new(layout.volumes());
        let spares = Spares::new(
            layout.clone(),
            launcher.clone(),
            images.clone(),
            spare_shims,
        );
        Ok(Arc::new(Manager {
            layout,
            images,
            volumes,
            runtimes,
            launcher,
            plugins,
            spares,
            containers: Mutex::new(BTreeMap::new()),
            removing: Mutex::new(BTreeMap::new()),
        }))
    }

    /// After recovery: a spare shim for the default runtime, and the task
    /// that retires old spares (and replaces those still in use).
    pub fn start_spares(self: &Arc<Self>) {
        if let Ok((_, bin)) = self.runtimes.resolve(None) {
            self.spares.refill(&bin, self.plugins.config_for_shims());
        }
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(spares::JANITOR_TICK).await;
                let Some(m) = m.upgrade() else { return };
                for bin in m.spares.expire() {
                    m.spares.refill(&bin, m.plugins.config_for_shims());
                }
            }
        });
    }

    /// What the shim's policy plugins recorded about a container (edits,
    /// audit-mode would-denies), when they recorded anything (the file is
    /// missing, or empty as a spare shim's bundle comes, otherwise).
    pub fn policy_record(&self, id: &str) -> Option<serde_json::Value> {
        let bytes = fs::read(self.layout.bundle(id).join(POLICY_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A container by id, unique id prefix, or name.
    pub fn get(&self, key: &str) -> Result<Arc<Container>> {
        let map = self.containers.lock().unwrap();
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = map.values().find(|c| c.rec.lock().unwrap().name == key) {
            return Ok(c.clone());
        }
        let hits: Vec<_> = if key.len() >= 4 {
            map.iter().filter(|(id, _)| id.starts_with(key)).collect()
        } else {
            Vec::new()
        };
        match hits.len() {
            1 => Ok(hits[0].1.clone()),
            0 => Err(CoreError::NotFound(format!(
                "no container {key:?}: `husk ps -a` lists the containers there are"
            ))),
            _ => Err(CoreError::InvalidArgument(format!(
                "{key:?} matches several container ids; give more of the id"
            ))),
        }
    }

    pub fn list(&self, all: bool) -> Vec<ContainerSummary> {
        let map = self.containers.lock().unwrap();
        let mut v: Vec<ContainerSummary> = map
            .values()
            .map(|c| c.rec.lock().unwrap().summary())
            .filter(|s| all || s.status == Status::Running)
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        v
    }

    fn save(&self, c: &Container) -> Result<()> {
        c.rec.lock().unwrap().save(&self.layout)
    }

    /// Creates a container: its rootfs, bundle, shim and task.
    pub async fn create(self: &Arc<Self>, p: CreateParams) -> Result<ContainerSummary> {
        let t0 = std::time::Instant::now();
        // An image looked up before, with the index unchanged since, costs
        // one stat here (no lock, no JSON, no hop to a blocking thread).
        let img = match self.images.inspect_cached(&p.image) {
            Some(img) => img,
            None => {
                let images = self.images.clone();
                let name = p.image.clone();
                tokio::task::spawn_blocking(move || images.inspect(&name))
                    .await
                    .map_err(|e| CoreError::Internal(e.to_string()))??
            }
        };
        let (runtime, shim_bin) = self.runtimes.resolve(p.runtime.as_deref())?;
        let specs = p
            .volumes
            .iter()
            .map(|v| volumes::parse_spec(v).map(|s| (v.clone(), s)))
            .collect::<Result<Vec<_>>>()?;
        for (raw, s) in &specs {
            if let VolumeSource::Host(h) = &s.source {
                volumes::check_host_path(h, raw)?;
            }
        }
        if let Some(n) = &p.name {
            state::validate_name(n)?;
        }
        let args = spec_builder::args(&img.config, &p)?;
        // A spare shim comes with its container's id and bundle.
        let spare = self.spares.take(&shim_bin).await;
        // The next spare of this binary comes with this image's rootfs.
        self.spares
            .wish_rootfs(&shim_bin, &p.image, upper_sync(p.auto_remove));
        // Shims that migrate the container's first process through
        // `cgroup.procs` (runc's) then find the kernel's lock warm. Not
        // for a spare, which is one of husk's shims: its runtime starts
        // the process inside the cgroup without taking that lock, and a
        // warm-up's first write, which holds the cgroup mutex for a whole
        // grace period, would only hold up its mkdirs.
        let _warm = spare.is_none().then(crate::cgroup_warm::hold);
        let id = match &spare {
            Some(s) => s.id.clone(),
            None => state::new_id()?,
        };
        let name = p.name.clone().unwrap_or_else(|| id[..12].to_string());
        let bundle = self.layout.bundle(&id);
        let cdir = self.layout.container_dir(&id);
        let rec = ContainerRecord {
            version: state::RECORD_VERSION,
            id: id.clone(),
            name: name.clone(),
            image: img.name.clone(),
            command: args,
            runtime,
            shim_binary: shim_bin.clone(),
            bundle: bundle.clone(),
            status: Status::Created,
            pid: 0,
            exit_code: None,
            created_at: state::now(),
            started_at: None,
            finished_at: None,
            shim_address: None,
            rootfs_mounted: false,
            volumes: specs
                .iter()
                .filter_map(|(_, s)| match &s.source {
                    VolumeSource::Named(n) => Some(n.clone()),
                    _ => None,
                })
                .collect(),
            params: p.clone(),
        };
        if let Err(e) = fs::create_dir_all(&cdir)
            .ctx(|| format!("creating {}", cdir.display()))
            .and_then(|()| {
                fs::create_dir_all(&bundle).ctx(|| format!("creating {}", bundle.display()))
            })
        {
            if let Some(s) = spare {
                self.spares.put_back(&shim_bin, s);
            }
            return Err(e);
        }
        let c = Container::new(rec);
        // Registered (and its record saved) before anything is mounted or
        // started, so that a crash from here on is found and cleaned up.
        {
            // The name check and the insert under one lock: two creates
            // with one name cannot both pass.
            let mut map = self.containers.lock().unwrap();
            if let Some(other) = map.values().find(|c| c.rec.lock().unwrap().name == name) {
                let _ = fs::remove_dir_all(&cdir);
                match spare {
                    Some(s) => self.spares.put_back(&shim_bin, s),
                    None => {
                        let _ = fs::remove_dir_all(&bundle);
                    }
                }
                return Err(CoreError::Conflict(format!(
                    "the name {name:?} is already used by container {}; remove it (`husk rm {name}`) or choose another name",
                    &other.id[..12]
                )));
            }
            map.insert(id.clone(), c.clone());
        }
        if let Err(e) = self.save(&c) {
            self.containers.lock().unwrap().remove(&id);
            let _ = fs::remove_dir_all(&cdir);
            match spare {
                Some(s) => self.spares.put_back(&shim_bin, s),
                None => {
                    let _ = fs::remove_dir_all(&bundle);
                }
            }
            return Err(e);
        }
        let r = self.create_inner(&c, &img, &specs, spare, t0).await;
        // The next create's spare starts once this container no longer
        // needs the CPU to get going: after a detached start, after an
        // attached run's end ([`Manager::refill_spare`]), or REFILL_AFTER
        // from now, whichever comes first. On two cores a shim starting
        // alongside a create, start, exit and removal slows them down.
        self.refill_later(shim_bin.clone());
        match r {
            Ok(()) => Ok(c.record().summary()),
            Err(e) => {
                tracing::warn!(id = %id, %e, "create failed; cleaning up");
                self.force_cleanup(&c).await;
                self.containers.lock().unwrap().remove(&id);
                let _ = fs::remove_dir_all(&cdir);
                let _ = fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn create_inner(
        self: &Arc<Self>,
        c: &Arc<Container>,
        image: &crate::images::store::ImageInspect,
        specs: &[(String, volumes::VolumeSpec)],
        spare: Option<Spare>,
        t0: std::time::Instant,
    ) -> Result<()> {
        let rec = c.record();
        let id = rec.id.clone();
        let bundle = rec.bundle.clone();
        let cdir = self.layout.container_dir(&id);
        let rootfs = bundle.join("rootfs");
        let lap = |what: &str| {
            tracing::debug!(id = %id, ms = t0.elapsed().as_secs_f64() * 1e3, "create: {what}");
        };
        lap("image looked up, record saved");
        // A spare shim (serving already, its log read from this bundle) is
        // the container's from here on: a failure below shuts it down
        // with the rest (`force_cleanup`).
        let premount = spare.as_ref().and_then(|s| s.rootfs.clone());
        let spare_client = spare.map(|s| {
            *c.shim_log.lock().unwrap() = Some(s.log);
            *c.client.lock().unwrap() = Some(s.client.clone());
            c.rec.lock().unwrap().shim_address = Some(s.address);
            s.client
        });
        let sync = upper_sync(rec.params.auto_remove);
        // The spare's rootfs, mounted ahead, if it is this image's (the
        // same lower dirs) and kind; any other is unmounted.
        let premounted = match premount {
            Some(m) if m.lowerdirs == self.images.lowerdirs_of(image) && m.sync == sync => true,
            Some(_) => {
                let (spares, id2) = (self.spares.clone(), id.clone());
                tokio::task::spawn_blocking(move || spares.drop_rootfs(&id2))
                    .await
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                false
            }
            None => false,
        };
        if !premounted {
            let images = self.images.clone();
            let (image, id2, rootfs2) = (rec.image.clone(), id.clone(), rootfs.clone());
            tokio::task::spawn_blocking(move || {
                images.mount_rootfs_with(
                    &image,
                    &id2,
                    &rootfs2,
                    &cdir.join("upper"),
                    &cdir.join("work"),
                    sync,
                )
            })
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))??;
        }
        lap(if premounted {
            "rootfs mounted ahead"
        } else {
            "rootfs mounted"
        });
        // Saved with the shim's address below; recovery unmounts either way.
        c.rec.lock().unwrap().rootfs_mounted = true;
        let mut binds = Vec::new();
        for (_, s) in specs {
            let source = match &s.source {
                VolumeSource::Host(h) => h.clone(),
                VolumeSource::Named(n) => self.volumes.create(n)?,
            };
            binds.push(BindMount {
                source,
                destination: s.destination.clone(),
                read_only: s.read_only,
            });
        }
        let spec = spec_builder::build(&id, image, &rec.params, &rootfs, &binds)?;
        // The bundle is runtime state (`--state`, /run/husk), gone at a
        // reboot: no fsync. A crash mid-write leaves a record without a
        // shim address, which recovery cleans up without reading this.
        let config = bundle.join("config.json");
        fs::write(
            &config,
            serde_json::to_vec_pretty(&spec).expect("a spec serializes"),
        )
        .ctx(|| format!("writing {}", config.display()))?;
        logs::make_fifos(&bundle, rec.params.stdin)?;
        let sink = LogSink::start(&bundle, &log_path(&self.layout, &id))?;
        *c.log.lock().unwrap() = Some(sink);
        let client = match spare_client {
            Some(client) => {
                lap("bundle written; spare shim taken");
                client
            }
            None => {
                *c.shim_log.lock().unwrap() = Some(logs::ShimLog::start(&bundle, &id)?);
                lap("bundle written");
                let address = {
                    let (l, bin, id2, b2) = (
                        self.launcher.clone(),
                        rec.shim_binary.clone(),
                        id.clone(),
                        bundle.clone(),
                    );
                    let plugins = self.plugins.config_for_shims();
                    tokio::task::spawn_blocking(move || {
                        l.start(&bin, &id2, &b2, plugins.as_deref())
                    })
                    .await
                    .map_err(|e| CoreError::Internal(e.to_string()))??
                };
                lap("shim started");
                // Not saved here: the shim wrote it to the bundle's
                // `address` file, where a restarted huskd finds it (the
                // record gets it with the next save).
                c.rec.lock().unwrap().shim_address = Some(address.clone());
                let client = shim_client::connect(&address).await?;
                *c.client.lock().unwrap() = Some(client.clone());
                client
            }
        };
        let path = |n: &str| bundle.join(n).to_string_lossy().into_owned();
        let req = api::CreateTaskRequest {
            id: id.clone(),
            bundle: path(""),
            stdin: if rec.params.stdin {
                path("stdin")
            } else {
                String::new()
            },
            stdout: path("stdout"),
            stderr: if rec.params.tty {
                String::new()
            } else {
                path("stderr")
            },
            terminal: rec.params.tty,
            options: self
                .plugins
                .config_for_shims()
                .map(|p| shim_client::plugin_options(&p))
                .into(),
            ..Default::default()
        };
        let resp = client
            .create(shim_client::ctx(60), &req)
            .await
            .map_err(|e| shim_client::rpc_err(&format!("creating container {id}"), e))?;
        lap("task created");
        // Not saved: a restarted huskd asks the shim (State), and Start saves.
        c.rec.lock().unwrap().pid = resp.pid;
        self.spawn_monitor(c.clone(), client);
        Ok(())
    }

    /// Starts the next spare shim for `c`'s shim binary, if there is none
    /// (see `create`).
    pub fn refill_spare(&self, c: &Container) {
        let bin = c.rec.lock().unwrap().shim_binary.clone();
        self.spares.refill(&bin, self.plugins.config_for_shims());
    }

    /// Refills the spare shim for `bin` after [`REFILL_AFTER`] (a no-op if
    /// it was refilled meanwhile).
    fn refill_later(self: &Arc<Self>, bin: PathBuf) {
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_AFTER).await;
            if let Some(m) = m.upgrade() {
                m.spares.refill(&bin, m.plugins.config_for_shims());
            }
        });
    }

    /// Kills whatever a failed create left: the task, the shim, the rootfs.
    async fn force_cleanup(&self, c: &Arc<Container>) {
        let rec = c.record();
        let client = c.client.lock().unwrap().take();
        if let Some(client) = client {
            let _ = client
                .kill(
                    shim_client::ctx(5),
                    &api::KillRequest {
                        id: rec.id.clone(),
                        signal: 9,
                        all: true,
                        ..Default::default()
                    },
                )
                .await;
            shim_client::delete_and_shutdown(&client, &rec.id).await;
        } else if rec.shim_address.is_some() {
            let _ = self.launcher.delete(&rec.shim_binary, &rec.id, &rec.bundle);
        }
        let sink = c.log.lock().unwrap().take();
        if let Some(sink) = sink {
            sink.close(Duration::from_millis(100)).await;
        }
        c.shim_log.lock().unwrap().take();
        let _ = self
            .images
            .unmount_rootfs(&rec.id, &rec.bundle.join("rootfs"));
    }

    fn spawn_monitor(self: &Arc<Self>, c: Arc<Container>, client: TaskClient) {
        let m = self.clone();
        tokio::spawn(async move {
            let id = c.id.clone();
            let r = client
                .wait(
                    ttrpc::context::Context::default(),
                    &api::WaitRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                )
                .await;
            let code = match r {
                Ok(w) => w.exit_status as i32,
                Err(e) => {
                    tracing::warn!(%id, %e, "lost the shim while waiting; cleaning up with shim delete");
                    *c.client.lock().unwrap() = None;
                    m.shim_delete(&c).await
                }
            };
            m.finish_exit(&c, code).await;
        });
    }

    /// `shim delete` for a dead shim; the exit status it reports.
    async fn shim_delete(&self, c: &Container) -> i32 {
        let rec = c.record();
        let l = self.launcher.clone();
        let r =
            tokio::task::spawn_blocking(move || l.delete(&rec.shim_binary, &rec.id, &rec.bundle))
                .await;
        match r {
            Ok(Ok(resp)) => resp.exit_status as i32,
            Ok(Err(e)) => {
                tracing::warn!(id = %c.id, %e, "shim delete failed");
                137
            }
            Err(_) => 137,
        }
    }

    /// The container exited with `code`: drain its output, delete the
    /// task, shut the shim down, unmount the rootfs, record the exit.
    ///
    /// A `--rm` container is gone from the user's view as soon as its exit
    /// is known and its output drained: it is unlisted, its name is free,
    /// and `run --rm` has its exit code. Its task, shim, rootfs mount and
    /// directories are removed right after ([`Manager::clean_up_removed`],
    /// tracked until done, waited for when huskd stops); if that fails,
    /// it is listed again as a stopped container, with the error logged,
    /// for `husk rm` to retry.
    async fn finish_exit(self: &Arc<Self>, c: &Arc<Container>, code: i32) {
        let _op = c.op.lock().await;
        if c.rec.lock().unwrap().status == Status::Stopped {
            return;
        }
        let t0 = std::time::Instant::now();
        let sink = c.log.lock().unwrap().take();
        if let Some(sink) = &sink {
            sink.close(Duration::from_secs(5)).await;
        }
        tracing::debug!(id = %c.id, ms = t0.elapsed().as_secs_f64() * 1e3, "output drained");
        let rec = c.record();
        if rec.params.auto_remove {
            c.rec.lock().unwrap().set_exited(code);
            self.removing
                .lock()
                .unwrap()
                .insert(c.id.clone(), c.clone());
            self.containers.lock().unwrap().remove(&c.id);
            tracing::info!(id = %c.id, code, "container exited");
            c.exit.send_replace(Some(code));
            c.settled.send_replace(true);
            match self.clean_up_removed(c, &rec).await {
                Ok(()) => {
                    tracing::debug!(id = %c.id, ms = t0.elapsed().as_secs_f64() * 1e3, "container removed");
                }
                Err(e) => self.reinstate(c, &e),
            }
            self.removing.lock().unwrap().remove(&c.id);
            return;
        }
        // The init is gone, and with it the container's mount namespace:
        // the rootfs is unmounted while the shim deletes the task.
        let (unmounted, ()) = tokio::join!(self.unmount(&rec), self.delete_task(c, false));
        if let Err(e) = unmounted {
            tracing::warn!(id = %c.id, %e, "unmounting the rootfs");
        }
        tracing::debug!(id = %c.id, ms = t0.elapsed().as_secs_f64() * 1e3, "task deleted, rootfs unmounted");
        c.rec.lock().unwrap().set_exited(code);
        if let Err(e) = self.save(c) {
            tracing::error!(id = %c.id, %e, "saving the exit");
        }
        tracing::info!(id = %c.id, code, "container exited");
        c.exit.send_replace(Some(code));
        c.settled.send_replace(true);
    }

    /// Deletes the task and shuts its shim down (the shim exits; with
    /// `wait_shutdown` once it has answered, else in the background).
    async fn delete_task(&self, c: &Container, wait_shutdown: bool) {
        let client = c.client.lock().unwrap().take();
        let shim_log = c.shim_log.lock().unwrap().take();
        let Some(client) = client else { return };
        shim_client::delete_task(&client, &c.id).await;
        let id = c.id.clone();
        let shutdown = async move {
            shim_client::shutdown(&client, &id).await;
            drop(shim_log);
        };
        if wait_shutdown {
            shutdown.await;
        } else {
            tokio::spawn(shutdown);
        }
    }

    /// The rest of a `--rm` container's removal, once it is unlisted: the
    /// task deleted and the shim shut down while the rootfs is unmounted,
    /// then its directories removed.
    async fn clean_up_removed(&self, c: &Container, rec: &ContainerRecord) -> Result<()> {
        let (unmounted, ()) = tokio::join!(self.unmount(rec), self.delete_task(c, true));
        if let Err(e) = unmounted {
            c.rec.lock().unwrap().rootfs_mounted = true;
            return Err(e);
        }
        self.remove_files(rec)
    }

    /// A `--rm` container whose removal failed is listed again, stopped,
    /// for `husk rm` to retry (under its id if its name was taken since).
    fn reinstate(&self, c: &Arc<Container>, e: &CoreError) {
        {
            let mut map = self.containers.lock().unwrap();
            let mut r = c.rec.lock().unwrap();
            if map.values().any(|o| o.rec.lock().unwrap().name == r.name) {
                r.name = r.id[..12].to_string();
            }
            drop(r);
            map.insert(c.id.clone(), c.clone());
        }
        tracing::error!(id = %c.id, %e, "removing a --rm container failed; it is listed as stopped: `husk rm` it once the cause is fixed");
        if let Err(e) = self.save(c) {
            tracing::error!(id = %c.id, %e, "saving the exit");
        }
    }

    /// Waits (at most `timeout`) for the removals of `--rm` containers
    /// still under way, as huskd stops.
    pub async fn finish_removals(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.removing.lock().unwrap().is_empty() {
            if tokio::time::Instant::now() >= deadline {
                let ids: Vec<String> = self.removing.lock().unwrap().keys().cloned().collect();
                tracing::warn!(?ids, "stopping before these --rm containers were removed; the next huskd finishes it");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a created container.
    pub async fn start(&self, key: &str) -> Result<Arc<Container>> {
        let c = self.get(key)?;
        let _op = c.op.lock().await;
        let st = c.rec.lock().unwrap().status;
        match st {
            Status::Created => {}
            Status::Running => {
                return Err(CoreError::Conflict(format!("container {key} is already running")))
            }
            Status::Stopped => {
                return Err(CoreError::Conflict(format!(
                    "container {key} has exited; a stopped container cannot be started again: `husk run` a new one"
                )))
            }
        }
        let client = c
            .client()
            .ok_or_else(|| CoreError::Runtime(format!("container {key} has no shim")))?;
        let resp = client
            .start(
                shim_client::ctx(30),
                &api::StartRequest {
                    id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| shim_client::rpc_err(&format!("starting container {key}"), e))?;
        let auto_remove = {
            let mut r = c.rec.lock().unwrap();
            if r.status == Status::Created {
                r.status = Status::Running;
                r.pid = resp.pid;
                r.started_at = Some(state::now());
            }
            r.params.auto_remove
        };
        // A `--rm` container's record is not saved again: a restarted huskd
        // takes its status and pid from the shim (`recover`), and its
        // record goes with it at its exit.
        if !auto_remove {
            self.save(&c)?;
        }
        Ok(c.clone())
    }

    async fn signal(&self, c: &Container, signal: u32, all: bool) -> Result<()> {
        let client = c
            .client()
            .ok_or_else(|| CoreError::Conflict(format!("container {} is not running", c.id)))?;
        client
            .kill(
                shim_client::ctx(10),
                &api::KillRequest {
                    id: c.id.clone(),
                    signal,
                    all,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| shim_client::rpc_err(&format!("signalling container {}", c.id), e))?;
        Ok(())
    }

    /// Sends `signal` to the container's init.
    pub async fn kill(&self, key: &str, signal: u32) -> Result<()> {
        let c = self.get(key)?;
        if c.rec.lock().unwrap().status == Status::Stopped {
            return Err(CoreError::Conflict(format!(
                "container {key} is not running"
            )));
        }
        self.signal(&c, signal, false).await
    }

    /// SIGTERM, then SIGKILL after `timeout`; returns the exit code.
    pub async fn stop(&self, key: &str, timeout: Duration) -> Result<i32> {
        let c = self.get(key)?;
        if c.rec.lock().unwrap().status == Status::Stopped {
            return Ok(c.wait_exit().await);
        }
        if c.rec.lock().unwrap().status == Status::Running {
            let _ = self.signal(&c, libc::SIGTERM as u32, false).await;
            if let Ok(code) = tokio::time::timeout(timeout, c.wait_exit()).await {
                return Ok(code);
            }
        }
        let _ = self.signal(&c, libc::SIGKILL as u32, true).await;
        tokio::time::timeout(Duration::from_secs(30), c.wait_exit())
            .await
            .map_err(|_| CoreError::Runtime(format!("container {key} did not exit after SIGKILL")))
    }

    /// Removes a container (with `force`, stops it first).
    pub async fn remove(&self, key: &str, force: bool) -> Result<()> {
        let c = self.get(key)?;
        let st = c.rec.lock().unwrap().status;
        if st != Status::Stopped {
            if !force {
                return Err(CoreError::Conflict(format!(
                    "container {key} is {st}: stop it first (`husk stop {key}`) or use `husk rm -f`"
                )));
            }
            let _ = self.signal(&c, libc::SIGKILL as u32, true).await;
            tokio::time::timeout(Duration::from_secs(30), c.wait_exit())
                .await
                .map_err(|_| {
                    CoreError::Runtime(format!("container {key} did not exit after SIGKILL"))
                })?;
        }
        let _op = c.op.lock().await;
        if !self.containers.lock().unwrap().contains_key(&c.id) {
            return Ok(());
        }
        let rec = c.record();
        self.unmount(&rec).await?;
        self.remove_files(&rec)?;
        self.containers.lock().unwrap().remove(&rec.id);
        tracing::info!(id = %rec.id, "container removed");
        Ok(())
    }

    /// Removes a container's record and files (its rootfs unmounted):
    /// renamed away at once, deleted in the background.
    fn remove_files(&self, rec: &ContainerRecord) -> Result<()> {
        let cdir = self.layout.container_dir(&rec.id);
        // The record goes first (rename away), so a crash never leaves a
        // record whose files are half gone.
        let trash = self.layout.containers_dir().join(format!(".rm-{}", rec.id));
        fs::rename(&cdir, &trash).ctx(|| format!("removing {}", cdir.display()))?;
        // The bundle moves out of the way too. Once renamed, nothing refers
        // to either (a restart deletes `.rm-*` directories and bundles
        // without a record), so they are deleted in the background: each
        // entry costs 1-4 ms on a busy ext4, which `rm` and `run --rm`
        // need not wait for.
        let bundle_trash = rec.bundle.with_file_name(format!(".rm-{}", rec.id));
        let bundle = match fs::rename(&rec.bundle, &bundle_trash) {
            Ok(()) => bundle_trash,
            Err(_) => rec.bundle.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let _ = fs::remove_dir_all(&bundle);
            let _ = fs::remove_dir_all(&trash);
        });
        Ok(())
    }

    /// Unmounts a container's rootfs (on the blocking pool: an overlay
    /// unmount syncs the upper filesystem, which can take a while).
    async fn unmount(&self, rec: &ContainerRecord) -> Result<()> {
        let images = self.images.clone();
        let (id, rootfs) = (rec.id.clone(), rec.bundle.join("rootfs"));
        tokio::task::spawn_blocking(move || images.unmount_rootfs(&id, &rootfs))
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Containers using named volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.rec.lock().unwrap().volumes.iter().any(|v| v == name))
            .map(|c| c.rec.lock().unwrap().name.clone())
            .collect()
    }

    /// The processes in the container (pids as the host sees them).
    pub async fn pids(&self, key: &str) -> Result<Vec<u32>> {
        let c = self.get(key)?;
        let client = c
            .client()
            .ok_or_else(|| CoreError::Conflict(format!("container {key} is not running")))?;
        let r = client
            .pids(
                shim_client::ctx(10),
                &api::PidsRequest {
                    id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| shim_client::rpc_err("listing processes", e))?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// Loads the records of a previous daemon and reconnects to live shims;
    /// exits that happened meanwhile are picked up, dead shims cleaned
    /// with `shim delete`.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        // First, as a spare's rootfs mounted ahead uses upper and work dirs
        // in a container directory without a record, removed below.
        spares::clean_leftovers(&self.layout).await;
        // Leftovers of interrupted removals.
        if let Ok(rd) = fs::read_dir(self.layout.containers_dir()) {
            for e in rd.flatten() {
                // An interrupted removal, or a create interrupted before
                // its record was first written.
                if e.file_name().to_string_lossy().starts_with(".rm-")
                    || !e.path().join("container.json").exists()
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let mut records = ContainerRecord::load_all(&self.layout)?;
        // Bundles without a record: a removal interrupted after the record
        // went, or a spare shim of the previous huskd. Its shim (if one
        // still answers at the bundle's `address`) is shut down; the rootfs
        // is unmounted (dropping the lease) and the bundle deleted.
        if let Ok(rd) = fs::read_dir(self.layout.state.join("bundles")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if records.iter().any(|r| r.id == id) {
                    continue;
                }
                tracing::info!(%id, "removing a bundle without a container record");
                spares::shutdown_orphan(&e.path()).await;
                let _ = self.images.unmount_rootfs(&id, &e.path().join("rootfs"));
                let _ = fs::remove_dir_all(e.path());
            }
        }
        // Leases without a record: a host crash lost a `--rm` container's
        // record (written without fsync) but not its lease.
        match self
            .images
            .drop_stale_leases(|id| records.iter().any(|r| r.id == id))
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(?ids, "dropped leases without a container")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%e, "dropping leases without a container"),
        }
        // The shim's address is saved with the record's first save after
        // the shim started; before that, the shim's own `address` file in
        // the bundle has it.
        for rec in records.iter_mut() {
            if rec.shim_address.is_none() && rec.status != Status::Stopped {
                rec.shim_address = fs::read_to_string(rec.bundle.join("address"))
                    .ok()
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty());
            }
        }
        for rec in records {
            let c = Container::new(rec.clone());
            self.containers
                .lock()
                .unwrap()
                .insert(rec.id.clone(), c.clone());
            if rec.status == Status::Stopped {
                if rec.rootfs_mounted {
                    let _ = self
                        .images
                        .unmount_rootfs(&rec.id, &rec.bundle.join("rootfs"));
                }
                continue;
            }
            let live = match &rec.shim_address {
                Some(addr) => match shim_client::connect(addr).await {
                    Ok(client) => {
                        let state = client
                            .state(
                                shim_client::ctx(5),
                                &api::StateRequest {
                                    id: rec.id.clone(),
                                    ..Default::default()
                                },
                            )
                            .await;
                        match &state {
                            Ok(st) => {
                                // The shim knows better than a record that
                                // was not saved after Start (`--rm`).
                                let running = st.status.enum_value() != Ok(TaskStatus::CREATED);
                                let mut r = c.rec.lock().unwrap();
                                if running && r.status == Status::Created {
                                    r.status = Status::Running;
                                    r.pid = st.pid;
                                }
                            }
                            // A shim that never got this container (huskd
                            // died between its start and Create) exits.
                            Err(_) => shim_client::delete_and_shutdown(&client, &rec.id).await,
                        }
                        state.ok().map(|_| client)
                    }
                    Err(_) => None,
                },
                None => None,
            };
            match live {
                Some(client) => {
                    tracing::info!(id = %rec.id, "reconnected to the shim");
                    match LogSink::start(&rec.bundle, &log_path(&self.layout, &rec.id)) {
                        Ok(s) => *c.log.lock().unwrap() = Some(s),
                        Err(e) => tracing::warn!(id = %rec.id, %e, "reopening the output FIFOs"),
                    }
                    match logs::ShimLog::start(&rec.bundle, &rec.id) {
                        Ok(l) => *c.shim_log.lock().unwrap() = Some(l),
                        Err(e) => tracing::warn!(id = %rec.id, %e, "reopening the shim's log"),
                    }
                    *c.client.lock().unwrap() = Some(client.clone());
                    self.spawn_monitor(c, client);
                }
                None => {
                    tracing::info!(id = %rec.id, "its shim is gone; cleaning up with shim delete");
                    let code = if rec.shim_address.is_some() {
                        self.shim_delete(&c).await
                    } else {
                        137
                    };
                    self.finish_exit(&c, code).await;
                }
            }
        }
        Ok(())
    }
}

/// `container.exec` parameters.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ExecParams {
    pub id: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Attach stdin (fed by the client's `stdin` frames).
    pub stdin: bool,
    /// A terminal.
    pub tty: bool,
}

/// A container's resource use, from the shim's Stats.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub id: String,
    pub name: String,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub cpu_usage_ns: u64,
    pub pids: u64,
    pub pids_limit: u64,
}

impl Manager {
    /// Runs a process in a running container; its output goes to `out`;
    /// returns its exit code.
    pub async fn exec(
        &self,
        p: ExecParams,
        out: &tokio::sync::mpsc::Sender<crate::api::Frame>,
        inbox: tokio::sync::mpsc::Receiver<crate::api::Input>,
    ) -> Result<i32> {
        use protobuf::well_known_types::any::Any;
        let c = self.get(&p.id)?;
        let rec = c.record();
        if rec.status != Status::Running {
            return Err(CoreError::Conflict(format!(
                "container {} is {}: exec needs a running container",
                p.id, rec.status
            )));
        }
        if p.cmd.is_empty() {
            return Err(CoreError::InvalidArgument("exec needs a command".into()));
        }
        let client = c
            .client()
            .ok_or_else(|| CoreError::Conflict(format!("container {} is not running", p.id)))?;
        let cfg = rec.bundle.join("config.json");
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(&cfg).ctx(|| format!("reading {}", cfg.display()))?)
                .map_err(|e| CoreError::Internal(format!("{}: {e}", cfg.display())))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(p.cmd);
        process["terminal"] = serde_json::json!(p.tty);
        let mut env: Vec<String> = process["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        for kv in &p.env {
            let Some((k, _)) = kv.split_once('=') else {
                return Err(CoreError::InvalidArgument(format!(
                    "invalid environment variable {kv:?}: use KEY=VALUE"
                )));
            };
            env.retain(|e| e.split_once('=').map(|x| x.0) != Some(k));
            env.push(kv.clone());
        }
        process["env"] = serde_json::json!(env);
        if let Some(w) = &p.workdir {
            process["cwd"] = serde_json::json!(w);
        }
        if let Some(u) = &p.user {
            let (uid, gid) = spec_builder::resolve_user(u, &rec.bundle.join("rootfs"))?;
            process["user"] = serde_json::json!({"uid": uid, "gid": gid});
        }
        let exec_id = format!("exec-{}", &state::new_id()?[..16]);
        let io = logs::ExecIo::start(&rec.bundle, &exec_id, p.stdin, p.tty, out.clone())?;
        let path_of = |s: &str| {
            io.paths
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, p)| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&process).expect("a process serializes");
        let req = api::ExecProcessRequest {
            id: c.id.clone(),
            exec_id: exec_id.clone(),
            stdin: path_of("stdin"),
            stdout: path_of("stdout"),
            stderr: path_of("stderr"),
            terminal: p.tty,
            spec: protobuf::MessageField::some(any),
            ..Default::default()
        };
        let r = async {
            client
                .exec(shim_client::ctx(30), &req)
                .await
                .map_err(|e| shim_client::rpc_err("exec", e))?;
            client
                .start(
                    shim_client::ctx(30),
                    &api::StartRequest {
                        id: c.id.clone(),
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| shim_client::rpc_err("starting the exec", e))?;
            if p.stdin {
                let stdin = PathBuf::from(path_of("stdin"));
                feed_input(
                    client.clone(),
                    c.id.clone(),
                    exec_id.clone(),
                    Some(stdin),
                    inbox,
                );
            } else if p.tty {
                feed_input(client.clone(), c.id.clone(), exec_id.clone(), None, inbox);
            }
            let w = client
                .wait(
                    ttrpc::context::Context::default(),
                    &api::WaitRequest {
                        id: c.id.clone(),
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| shim_client::rpc_err("waiting for the exec", e))?;
            Ok::<i32, CoreError>(w.exit_status as i32)
        }
        .await;
        io.finish(Duration::from_secs(5)).await;
        let _ = client
            .delete(
                shim_client::ctx(10),
                &api::DeleteRequest {
                    id: c.id.clone(),
                    exec_id,
                    ..Default::default()
                },
            )
            .await;
        r
    }

    /// Memory, CPU and pids of a running container.
    pub async fn stats(&self, key: &str) -> Result<Stats> {
        use containerd_shim_protos::cgroups::metrics::Metrics as V1;
        use containerd_shim_protos::cgroups_v2::metrics::Metrics as V2;
        use protobuf::Message;
        let c = self.get(key)?;
        let rec = c.record();
        let client = c
            .client()
            .ok_or_else(|| CoreError::Conflict(format!("container {key} is not running")))?;
        let r = client
            .stats(
                shim_client::ctx(10),
                &api::StatsRequest {
                    id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| shim_client::rpc_err("reading stats", e))?;
        let any = r.stats.into_option().unwrap_or_default();
        let mut s = Stats {
            id: rec.id,
            name: rec.name,
            ..Default::default()
        };
        if any.type_url.ends_with("cgroups.v2.Metrics") {
            let m = V2::parse_from_bytes(&any.value)
                .map_err(|e| CoreError::Runtime(format!("decoding stats: {e}")))?;
            s.memory_usage = m.memory.usage;
            s.memory_limit = m.memory.usage_limit;
            s.cpu_usage_ns = m.cpu.usage_usec * 1000;
            s.pids = m.pids.current;
            s.pids_limit = m.pids.limit;
        } else {
            let m = V1::parse_from_bytes(&any.value)
                .map_err(|e| CoreError::Runtime(format!("decoding stats: {e}")))?;
            s.memory_usage = m.memory.usage.usage;
            s.memory_limit = m.memory.usage.limit;
            s.cpu_usage_ns = m.cpu.usage.total;
            s.pids = m.pids.current;
            s.pids_limit = m.pids.limit;
        }
        Ok(s)
    }
}

/// Forwards a client's input frames to a process: stdin bytes into its
/// stdin FIFO, `close_stdin` (or the client leaving) as CloseIO, `resize`
/// as ResizePty.
pub fn feed_input(
    client: TaskClient,
    id: String,
    exec_id: String,
    stdin: Option<PathBuf>,
    mut inbox: tokio::sync::mpsc::Receiver<crate::api::Input>,
) {
    use crate::api::Input;
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        // As containerd's cio does: wait for the shim to open its reader
        // (a shim may do it only as the process starts), then write.
        let mut tx = None;
        if let Some(p) = &stdin {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::unix::pipe::OpenOptions::new().open_sender(p) {
                    Ok(t) => {
                        tx = Some(t);
                        break;
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENXIO)
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        tracing::warn!(%id, %e, path = %p.display(), "opening stdin");
                        break;
                    }
                }
            }
        }
        let mut closed = false;
        loop {
            match inbox.recv().await {
                Some(Input::Stdin { data }) => {
                    if let Some(t) = tx.as_mut() {
                        if t.write_all(data.as_bytes()).await.is_err() {
                            tx = None;
                        }
                    }
                }
                Some(Input::Resize { width, height }) => {
                    let _ = client
                        .resize_pty(
                            shim_client::ctx(5),
                            &api::ResizePtyRequest {
                                id: id.clone(),
                                exec_id: exec_id.clone(),
                                width,
                                height,
                                ..Default::default()
                            },
                        )
                        .await;
                }
                Some(Input::CloseStdin) | None => {
                    if stdin.is_some() && !closed {
                        closed = true;
                        if let Some(t) = tx.take() {
                            // Let the shim read what is in the FIFO first:
                            // a shim that copies stdin (runc's) drops what
                            // it has not read when CloseIO comes.
                            wait_drained(&t, Duration::from_secs(5)).await;
                            drop(t);
                            // Such a shim also closes the process's stdin
                            // at the FIFO's EOF; give its copier a moment
                            // to pass on what it read.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let _ = client
                            .close_io(
                                shim_client::ctx(5),
                                &api::CloseIORequest {
                                    id: id.clone(),
                                    exec_id: exec_id.clone(),
                                    stdin: true,
                                    ..Default::default()
                                },
                            )
                            .await;
                    }
                    if inbox.is_closed() && inbox.is_empty() {
                        return;
                    }
                }
            }
        }
    });
}

impl Manager {
    /// Starts feeding a client's input to container `c`'s init.
    pub fn attach_input(
        &self,
        c: &Container,
        inbox: tokio::sync::mpsc::Receiver<crate::api::Input>,
    ) {
        let rec = c.record();
        let Some(client) = c.client() else { return };
        if !rec.params.stdin && !rec.params.tty {
            return;
        }
        let stdin = rec.params.stdin.then(|| rec.bundle.join("stdin"));
        feed_input(client, rec.id, String::new(), stdin, inbox);
    }
}

/// Waits (at most `timeout`) until a FIFO holds no unread bytes.
async fn wait_drained(tx: &tokio::net::unix::pipe::Sender, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int; the fd is open for the call.
        let r = unsafe { libc::ioctl(tx.as_raw_fd(), libc::FIONREAD, &mut n) };
        if r != 0 || n == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
