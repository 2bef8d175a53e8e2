//! Spare shims: a shim daemon started before a container needs it, so a
//! create does not wait for `shim start` (two executions of the shim
//! binary, a fork and a daemonization: 6-13 ms of every `husk run`).
//!
//! A spare is an ordinary `shim start` for a container id chosen in
//! advance, in a directory `<state>/spares/<id>` with the shim's `log`
//! FIFO, with `-id <id>`, exactly as for a container. The next create with
//! that shim binary takes the spare and becomes container `<id>`: the
//! directory is renamed to the bundle `<state>/bundles/<id>` (the shim
//! needs its start directory only while it starts), its record,
//! config.json and FIFOs are written and Create goes to the waiting shim.
//! So the shim's command line, socket name, `address` file and log are the
//! container's own, and nothing downstream (recovery, `shim delete`, live
//! swap, leak checks by id) can tell a spare-born container from another.
//!
//! - Only husk's shims are kept spare: a spare is asked
//!   `husk.shim.v1.Shim/Info` once it serves, and a binary whose shim does
//!   not answer it (runc's, which also needs config.json at `start`) is
//!   never spared again.
//! - One spare per shim binary, started in the background after a create
//!   with that binary took the last one (and, for the default runtime,
//!   when huskd starts).
//! - Spares do not leak. A spare is started with a shim idle timeout of
//!   [`SPARE_IDLE_TIMEOUT`] (it exits by itself if it never gets a
//!   container); huskd retires it (Shutdown, bundle removed) after
//!   [`MAX_AGE`], well before that, and starts a new one only if that
//!   binary was used within [`KEEP_WARM_FOR`]. huskd shuts its spares
//!   down when it exits; after a crash, the next huskd shuts down the shims
//!   it finds in `<state>/spares` (and in bundles without a record) through
//!   their `address` files (`Manager::recover`).
//! - A spare comes with its container's rootfs when it can: the overlay
//!   of the image the last create with that binary used (and its kind,
//!   `volatile` for `--rm`), mounted at `<spare dir>/rootfs` with the
//!   upper and work dirs and the lease of container `<id>`, as the create
//!   would mount it ([`Premount`]). A create of that image (the same
//!   lower dirs) and kind uses it; any other unmounts it and mounts its
//!   own. The mount moves with the directory's rename. A spare retired
//!   or closed is unmounted first; after a crash, `clean_leftovers`
//!   unmounts it and recovery drops its lease. Removing an image name
//!   unmounts every spare's rootfs ([`Spares::forget_rootfs`]), so that no
//!   lease keeps the image's layers from a prune (one that is being
//!   mounted at that moment keeps them until its spare is retired or
//!   taken, at most [`MAX_AGE`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::shim_async::TaskClient;
use husk_shim_api::{InfoRequest, ShimClient};

use crate::error::{CoreError, IoContext};
use crate::images::{ImageStore, RootfsMount, UpperSync};
use crate::logs::{self, ShimLog};
use crate::shim_client::{self, ShimLauncher};
use crate::state::{self, Layout};

/// The idle timeout a spare shim is started with.
pub const SPARE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// huskd retires a spare older than this (half the shim's own timeout:
/// a spare is never handed out near the moment it would exit).
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// A retired spare is replaced if its binary ran a container this
/// recently; an idle huskd stops keeping spares after that.
pub const KEEP_WARM_FOR: Duration = Duration::from_secs(600);
/// After a spare failed to start, none is tried for this long.
const BACKOFF: Duration = Duration::from_secs(30);
/// A binary whose spares failed to start this many times in a row is not
/// spared again (runc's shim, for one, will not start without config.json).
const MAX_FAILURES: u32 = 3;
/// How long a create waits for a spare that is starting.
const TAKE_WAIT: Duration = Duration::from_millis(100);
/// How often old spares are looked for.
pub const JANITOR_TICK: Duration = Duration::from_secs(10);

/// A shim serving, waiting for its container.
pub struct Spare {
    /// The id its container will have.
    pub id: String,
    pub address: String,
    pub client: TaskClient,
    /// The reader of the shim's log FIFO in the bundle.
    pub log: ShimLog,
    pid: Option<i32>,
    born: Instant,
    /// The binary file it was started from (device, inode, mtime).
    binary: Option<FileStamp>,
    /// Its container's rootfs, mounted ahead.
    pub rootfs: Option<Premount>,
}

/// A rootfs mounted for a spare's container before it is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Premount {
    /// The image's lower dirs, bottom last (`ImageStore::lowerdirs_of`).
    pub lowerdirs: Vec<PathBuf>,
    pub sync: UpperSync,
}

/// The rootfs the next spare of a binary is to come with.
#[derive(Clone, Debug)]
struct Wish {
    image: String,
    sync: UpperSync,
}

type FileStamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

impl Spare {
    /// Still fit to serve a container of `bin`: young, alive, and `bin`
    /// is still the file it was started from (a shim binary replaced on
    /// disk, as by an upgrade, is what new containers must get).
    fn fit(&self, bin: &Path) -> bool {
        self.born.elapsed() < MAX_AGE && self.alive() && stamp(bin) == self.binary
    }

    fn alive(&self) -> bool {
        match self.pid {
            Some(pid) => {
                // SAFETY: kill with signal 0 only checks that the process
                // exists.
                let r = unsafe { libc::kill(pid, 0) };
                r == 0
            }
            None => true,
        }
    }
}

#[derive(Default)]
struct Slot {
    spare: Option<Spare>,
    starting: bool,
    last_used: Option<Instant>,
    /// Not a husk shim (or it failed to start as a spare
    /// [`MAX_FAILURES`] times running): never spared.
    refused: bool,
    failures: u32,
    backoff_until: Option<Instant>,
    /// What the last create with this binary mounted.
    wish: Option<Wish>,
}

/// The spare shims, one slot per shim binary.
pub struct Spares {
    layout: Layout,
    launcher: ShimLauncher,
    images: ImageStore,
    enabled: bool,
    slots: Mutex<HashMap<PathBuf, Slot>>,
    closed: std::sync::atomic::AtomicBool,
    /// Woken whenever a launch ends.
    launched: tokio::sync::Notify,
    /// Retirements under way ([`Spares::retire`]): `close` waits for them,
    /// so that no rootfs mounted ahead outlives huskd.
    retiring: Arc<std::sync::atomic::AtomicUsize>,
}

enum LaunchError {
    NotHusk,
    Failed(CoreError),
}

impl From<CoreError> for LaunchError {
    fn from(e: CoreError) -> Self {
        LaunchError::Failed(e)
    }
}

impl Spares {
    /// `enabled: false` (`huskd --spare-shims 0`) keeps none.
    pub fn new(
        layout: Layout,
        launcher: ShimLauncher,
        images: ImageStore,
        enabled: bool,
    ) -> Arc<Spares> {
        Arc::new(Spares {
            layout,
            launcher,
            images,
            enabled,
            slots: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            launched: tokio::sync::Notify::new(),
            retiring: Arc::default(),
        })
    }

    /// The spare for `bin`, its directory moved to the bundle of container
    /// `spare.id`; marks `bin` as in use. A spare still starting is waited
    /// for (at most [`TAKE_WAIT`]: it is ready sooner than a shim started
    /// now would be); `None` if there is none.
    pub async fn take(&self, bin: &Path) -> Option<Spare> {
        let deadline = tokio::time::Instant::now() + TAKE_WAIT;
        let spare = loop {
            let launched = self.launched.notified();
            tokio::pin!(launched);
            launched.as_mut().enable();
            {
                let mut slots = self.slots.lock().unwrap();
                let slot = slots.entry(bin.to_path_buf()).or_default();
                slot.last_used = Some(Instant::now());
                if let Some(s) = slot.spare.take() {
                    break s;
                }
                if !slot.starting {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, launched).await.is_err() {
                return None;
            }
        };
        if !spare.fit(bin) {
            self.retire(spare);
            return None;
        }
        let (from, to) = (
            self.layout.spares_dir().join(&spare.id),
            self.layout.bundle(&spare.id),
        );
        match fs::rename(&from, &to) {
            Ok(()) => Some(spare),
            Err(e) => {
                tracing::warn!(%e, from = %from.display(), "taking a spare shim");
                self.retire(spare);
                None
            }
        }
    }

    /// The next spares of `bin` come with the rootfs of `image` (of kind
    /// `sync`) mounted: what a create with `bin` just asked for.
    pub fn wish_rootfs(&self, bin: &Path, image: &str, sync: UpperSync) {
        let mut slots = self.slots.lock().unwrap();
        slots.entry(bin.to_path_buf()).or_default().wish = Some(Wish {
            image: image.to_string(),
            sync,
        });
    }

    /// Unmounts a spare's premounted rootfs (wherever its directory is:
    /// among the spares, or moved to its bundle) and removes its upper and
    /// work dirs; drops the lease (blocking).
    pub fn drop_rootfs(&self, id: &str) {
        drop_rootfs(&self.images, &self.layout, id);
    }

    /// Unmounts every spare's rootfs mounted ahead (blocking): after an
    /// image name is removed, their leases must not keep its layers from
    /// `husk image prune`. The spares stay, without a rootfs.
    pub fn forget_rootfs(&self) {
        let ids: Vec<String> = {
            let mut slots = self.slots.lock().unwrap();
            slots
                .values_mut()
                .filter_map(|slot| {
                    let s = slot.spare.as_mut()?;
                    s.rootfs.take().map(|_| s.id.clone())
                })
                .collect()
        };
        for id in ids {
            self.drop_rootfs(&id);
        }
    }

    /// Mounts the rootfs `wish` names for spare `id` (blocking).
    fn premount(&self, id: &str, wish: &Wish) -> Option<Premount> {
        let img = match self.images.inspect_cached(&wish.image) {
            Some(i) => i,
            None => self.images.inspect(&wish.image).ok()?,
        };
        let cdir = self.layout.container_dir(id);
        let mounted: crate::images::Result<RootfsMount> = self.images.mount_rootfs_with(
            &wish.image,
            id,
            &self.layout.spares_dir().join(id).join("rootfs"),
            &cdir.join("upper"),
            &cdir.join("work"),
            wish.sync,
        );
        match mounted {
            // The name may have moved between the two looks: what is
            // mounted is what counts.
            Ok(m) if m.lowerdirs == self.images.lowerdirs_of(&img) => Some(Premount {
                lowerdirs: m.lowerdirs,
                sync: wish.sync,
            }),
            Ok(_) => {
                self.drop_rootfs(id);
                None
            }
            Err(e) => {
                tracing::debug!(id, %e, "mounting a spare's rootfs ahead failed");
                self.drop_rootfs(id);
                None
            }
        }
    }

    /// The spares ready now: (container id to be, address, binary).
    pub fn listing(&self) -> Vec<(String, String, PathBuf)> {
        let slots = self.slots.lock().unwrap();
        slots
            .iter()
            .filter_map(|(bin, slot)| {
                let s = slot.spare.as_ref()?;
                Some((s.id.clone(), s.address.clone(), bin.clone()))
            })
            .collect()
    }

    /// Gives back a spare a create took but did not use (its bundle moves
    /// back to the spares).
    pub fn put_back(&self, bin: &Path, spare: Spare) {
        let (from, to) = (
            self.layout.bundle(&spare.id),
            self.layout.spares_dir().join(&spare.id),
        );
        if fs::rename(&from, &to).is_err() {
            self.retire(spare);
            return;
        }
        let extra = {
            let mut slots = self.slots.lock().unwrap();
            let slot = slots.entry(bin.to_path_buf()).or_default();
            match slot.spare {
                None if !self.is_closed() => {
                    slot.spare = Some(spare);
                    None
                }
                _ => Some(spare),
            }
        };
        if let Some(s) = extra {
            self.retire(s);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a spare for `bin` in the background, unless one is there or
    /// coming, or `bin` is not a husk shim.
    pub fn refill(self: &Arc<Self>, bin: &Path, plugin_config: Option<PathBuf>) {
        let wish = {
            let mut slots = self.slots.lock().unwrap();
            let slot = slots.entry(bin.to_path_buf()).or_default();
            let backing_off = slot.backoff_until.is_some_and(|t| Instant::now() < t);
            if !self.enabled
                || self.is_closed()
                || slot.refused
                || slot.starting
                || slot.spare.is_some()
                || backing_off
            {
                return;
            }
            slot.starting = true;
            slot.wish.clone()
        };
        let me = self.clone();
        let bin = bin.to_path_buf();
        tokio::spawn(async move {
            let r = me.launch(&bin, plugin_config, wish).await;
            let extra = {
                let mut slots = me.slots.lock().unwrap();
                let slot = slots.entry(bin.clone()).or_default();
                match r {
                    Ok(s) if slot.spare.is_none() && !me.is_closed() => {
                        tracing::debug!(id = %s.id, bin = %bin.display(), "spare shim ready");
                        slot.failures = 0;
                        slot.spare = Some(s);
                        None
                    }
                    Ok(s) => Some(s),
                    Err(LaunchError::NotHusk) => {
                        tracing::info!(bin = %bin.display(), "not a husk shim: no spare shims for it");
                        slot.refused = true;
                        None
                    }
                    Err(LaunchError::Failed(e)) => {
                        slot.failures += 1;
                        slot.refused = slot.failures >= MAX_FAILURES;
                        slot.backoff_until = Some(Instant::now() + BACKOFF);
                        tracing::info!(bin = %bin.display(), %e, failures = slot.failures,
                            "starting a spare shim failed; creates start their own shim");
                        None
                    }
                }
            };
            // Retiring (counted) before the launch ends: `close` sees one
            // or the other.
            if let Some(s) = extra {
                me.retire(s);
            }
            me.slots
                .lock()
                .unwrap()
                .entry(bin.clone())
                .or_default()
                .starting = false;
            me.launched.notify_waiters();
        });
    }

    async fn launch(
        self: &Arc<Self>,
        bin: &Path,
        plugin_config: Option<PathBuf>,
        wish: Option<Wish>,
    ) -> std::result::Result<Spare, LaunchError> {
        let id = state::new_id()?;
        let dir = self.layout.spares_dir().join(&id);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        // The output FIFOs every container gets, made now rather than in
        // the create that takes this spare: a new inode costs 0.05-0.3 ms
        // on a churned ext4 without a journal (a scan past recently
        // deleted ones). The create's make_fifos finds them.
        // Likewise the file the shim records its policy plugins' decision
        // in (written in place; empty: nothing recorded).
        let made = logs::make_fifos(&dir, false).and_then(|()| match plugin_config {
            Some(_) => {
                let record = dir.join(crate::containers::POLICY_RECORD);
                fs::File::create(&record)
                    .map(drop)
                    .ctx(|| format!("creating {}", record.display()))
            }
            None => Ok(()),
        });
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        let r = self.launch_in(bin, &id, &dir, plugin_config).await;
        match r {
            Ok(mut spare) => {
                if let Some(wish) = wish {
                    let (me, id) = (self.clone(), id.clone());
                    spare.rootfs = tokio::task::spawn_blocking(move || me.premount(&id, &wish))
                        .await
                        .ok()
                        .flatten();
                }
                Ok(spare)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn launch_in(
        &self,
        bin: &Path,
        id: &str,
        bundle: &Path,
        plugin_config: Option<PathBuf>,
    ) -> std::result::Result<Spare, LaunchError> {
        let log = ShimLog::start(bundle, id)?;
        let binary = stamp(bin);
        let address = {
            let (l, bin, id, bundle) = (
                self.launcher.clone(),
                bin.to_path_buf(),
                id.to_string(),
                bundle.to_path_buf(),
            );
            tokio::task::spawn_blocking(move || {
                l.start_with_idle_timeout(
                    &bin,
                    &id,
                    &bundle,
                    plugin_config.as_deref(),
                    Some(SPARE_IDLE_TIMEOUT),
                )
            })
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))??
        };
        let conn = ttrpc::asynchronous::Client::connect(&address)
            .await
            .map_err(|e| CoreError::Runtime(format!("connecting to the shim at {address}: {e}")))?;
        let client = TaskClient::new(conn.clone());
        let info = ShimClient::new(conn)
            .info(shim_client::ctx(5), &InfoRequest::new())
            .await;
        let pid = fs::read_to_string(bundle.join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let spare = Spare {
            id: id.to_string(),
            address,
            client,
            log,
            pid,
            born: Instant::now(),
            binary,
            rootfs: None,
        };
        match info {
            Ok(_) => Ok(spare),
            Err(e) => {
                let not_husk = matches!(&e, ttrpc::Error::RpcStatus(s)
                    if s.message.contains("service does not exist"));
                self.retire(spare);
                if not_husk {
                    Err(LaunchError::NotHusk)
                } else {
                    Err(LaunchError::Failed(shim_client::rpc_err(
                        "asking a spare shim who it is",
                        e,
                    )))
                }
            }
        }
    }

    /// Shuts a spare down (it holds no container, so it exits) and removes
    /// its directory, in the background.
    fn retire(&self, spare: Spare) {
        let dir = self.layout.spares_dir().join(&spare.id);
        let (images, layout) = (self.images.clone(), self.layout.clone());
        let retiring = Retiring::start(&self.retiring);
        tokio::spawn(async move {
            let _retiring = retiring;
            shutdown(&spare.client, &spare.id).await;
            drop(spare.log);
            let premounted = spare.rootfs.is_some();
            let id = spare.id;
            let _ = tokio::task::spawn_blocking(move || {
                if premounted {
                    drop_rootfs(&images, &layout, &id);
                }
                fs::remove_dir_all(&dir)
            })
            .await;
        });
    }

    /// Retires spares past [`MAX_AGE`]; returns the binaries to start a
    /// new spare for (used within [`KEEP_WARM_FOR`]).
    pub fn expire(&self) -> Vec<PathBuf> {
        let mut old = Vec::new();
        let mut again = Vec::new();
        {
            let mut slots = self.slots.lock().unwrap();
            for (bin, slot) in slots.iter_mut() {
                let expired = slot.spare.as_ref().is_some_and(|s| !s.fit(bin));
                if expired {
                    old.extend(slot.spare.take());
                }
                if slot.spare.is_none()
                    && slot.last_used.is_some_and(|t| t.elapsed() < KEEP_WARM_FOR)
                {
                    again.push(bin.clone());
                }
            }
        }
        for s in old {
            tracing::debug!(id = %s.id, "retiring an old spare shim");
            self.retire(s);
        }
        again
    }

    /// huskd is exiting: no new spares; every spare (and any being
    /// started, or being retired) is shut down, its rootfs unmounted and
    /// its bundle removed before this returns (within 5 s).
    pub async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (spares, starting) = {
                let mut slots = self.slots.lock().unwrap();
                let spares: Vec<Spare> =
                    slots.values_mut().filter_map(|s| s.spare.take()).collect();
                (spares, slots.values().any(|s| s.starting))
            };
            for s in spares {
                shutdown(&s.client, &s.id).await;
                drop(s.log);
                if s.rootfs.is_some() {
                    self.drop_rootfs(&s.id);
                }
                let _ = fs::remove_dir_all(self.layout.spares_dir().join(&s.id));
            }
            let retiring = self.retiring.load(std::sync::atomic::Ordering::SeqCst) > 0;
            if !(starting || retiring) || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One retirement under way, counted until dropped.
struct Retiring(Arc<std::sync::atomic::AtomicUsize>);

impl Retiring {
    fn start(count: &Arc<std::sync::atomic::AtomicUsize>) -> Retiring {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Retiring(count.clone())
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// [`Spares::drop_rootfs`]. The container directory goes too if nothing
/// else is in it (a spare's; not a container's, with its record).
fn drop_rootfs(images: &ImageStore, layout: &Layout, id: &str) {
    for dir in [layout.spares_dir().join(id), layout.bundle(id)] {
        if let Err(e) = images.unmount_rootfs(id, &dir.join("rootfs")) {
            tracing::warn!(id, %e, "unmounting a spare's rootfs");
        }
    }
    let cdir = layout.container_dir(id);
    for d in ["upper", "work"] {
        let _ = fs::remove_dir_all(cdir.join(d));
    }
    let _ = fs::remove_dir(&cdir);
}

/// Shutdown to a shim that holds no container: it exits.
async fn shutdown(client: &TaskClient, id: &str) {
    let req = containerd_shim_protos::api::ShutdownRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let _ = client.shutdown(shim_client::ctx(2), &req).await;
}

/// Shuts down the spare shims a previous huskd left in `<state>/spares`
/// and removes their directories.
pub async fn clean_leftovers(layout: &Layout) {
    let Ok(rd) = fs::read_dir(layout.spares_dir()) else {
        return;
    };
    for e in rd.flatten() {
        shutdown_orphan(&e.path()).await;
        // A rootfs mounted ahead (its lease goes with recovery's stale
        // leases, its upper and work dirs with the container directories
        // without a record).
        let _ = crate::images::overlay::unmount(&e.path().join("rootfs"));
        let _ = fs::remove_dir_all(e.path());
    }
}

/// Shuts down the shim whose `address` file is in `bundle` (a spare's
/// directory, or a bundle without a container record: a spare being handed
/// over, or a create that crashed before its record was written). A shim
/// that holds a container ignores Shutdown.
pub async fn shutdown_orphan(bundle: &Path) {
    let Ok(address) = fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let address = address.trim();
    let connect = ttrpc::asynchronous::Client::connect(address);
    if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
        tracing::info!(bundle = %bundle.display(), "shutting down a shim without a container");
        shutdown(&TaskClient::new(conn), "").await;
    }
}
