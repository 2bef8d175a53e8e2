//! A WebAssembly component plugin.
//!
//! Loading (once, at startup or reload) reads the file, checks it is a
//! component of a `husk:plugin@0.1.0` world, compiles it through the
//! [`CompileCache`], checks its imports against its grants, links it into an
//! [`InstancePre`] and instantiates it once as a test. Each hook call then
//! instantiates it afresh in a new `Store` (from the engine's pool), with
//! the plugin's memory cap and epoch deadline, calls the hook and drops the
//! store: nothing a call leaves in the instance reaches the next container.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{
    self, lifecycle_hooks, log::Level, policy_hooks, store::StoreError, ContainerView, ExitEvent,
    KeyValue, StartEvent, Verdict,
};
use crate::cache::CompileCache;
use crate::config::{Hook, PluginConfig};
use crate::grants::WasiGrants;
use crate::kv::KvStore;
use crate::limits::{EpochTicker, MemoryCap, MemoryCapExceeded};
use crate::{Error, HookFailure};

/// The most `log` calls one hook call may make; later ones are dropped.
const MAX_LOGS_PER_CALL: u32 = 64;
/// Longer log messages are cut.
const MAX_LOG_BYTES: usize = 4096;

/// How long the parts of one hook call took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallPhases {
    /// A fresh store and instance from the `InstancePre` (the pool's slots,
    /// the core instances' vmctx, table elements, start functions).
    pub instantiate: Duration,
    /// Lowering the arguments, the guest's own work, lifting the result.
    pub call: Duration,
    /// Dropping the store: the slots go back to the pool, reset.
    pub drop: Duration,
}

/// What a plugin's calls share: its name, its config map and its store.
pub struct PluginShared {
    pub name: String,
    pub config: BTreeMap<String, String>,
    /// Present only with the `store` grant.
    pub store: Option<Arc<KvStore>>,
}

/// The data of one call's `Store`.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    shared: Arc<PluginShared>,
    logs: u32,
    /// When the call began, and how long it spent in the host's store
    /// (file locks, fsync): the time limit is the plugin's own time.
    began: Instant,
    in_store: Duration,
}

/// The most a call may spend in store operations, on top of its limit: a
/// plugin looping on store writes is still stopped.
const MAX_STORE_TIME: Duration = Duration::from_secs(2);

impl CallState {
    /// Runs a store operation, keeping its time off the plugin's clock.
    fn timed<T>(
        &mut self,
        op: impl FnOnce(&KvStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let t = Instant::now();
        let store = self.store()?;
        let out = op(store);
        self.in_store += t.elapsed();
        out
    }

    /// At the epoch deadline: the plugin's own time so far (wall clock
    /// minus store operations) against `limit`.
    fn past_limit(&self, limit: Duration) -> Option<Duration> {
        let own = self.began.elapsed().saturating_sub(self.in_store);
        if own >= limit || self.in_store >= MAX_STORE_TIME {
            None
        } else {
            Some(limit - own)
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::husk::plugin::types::Host for CallState {}

impl bindings::config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.shared.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<KeyValue> {
        self.shared
            .config
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }
}

impl bindings::log::Host for CallState {
    fn log(&mut self, level: Level, mut message: String) {
        self.logs += 1;
        if self.logs > MAX_LOGS_PER_CALL {
            return;
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = self.shared.name.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl CallState {
    fn store(&self) -> Result<&KvStore, StoreError> {
        // Unreachable in practice: a plugin importing the store without the
        // grant is refused at load.
        self.shared
            .store
            .as_deref()
            .ok_or_else(|| StoreError::Io("the store is not granted to this plugin".into()))
    }
}

impl bindings::store::Host for CallState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.timed(|s| Ok(s.get(&key))).ok().flatten()
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.timed(|s| s.set(&key, value))
    }
    fn delete(&mut self, key: String) -> Result<(), StoreError> {
        self.timed(|s| s.delete(&key))
    }
    fn keys(&mut self, prefix: String) -> Vec<String> {
        self.timed(|s| Ok(s.keys(&prefix))).unwrap_or_default()
    }
    fn increment(&mut self, key: String, delta: i64) -> Result<i64, StoreError> {
        self.timed(|s| s.increment(&key, delta))
    }
}

/// The linker every plugin of an engine is linked with: WASI 0.2 (powerless
/// unless granted, see [`crate::grants`]) and the husk:plugin host imports.
pub fn new_linker(engine: &Engine) -> Result<Linker<CallState>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| Error::Engine(format!("linking WASI: {e:#}")))?;
    bindings::Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
        .map_err(|e| Error::Engine(format!("linking husk:plugin: {e:#}")))?;
    Ok(linker)
}

/// A loaded component plugin.
pub struct WasmPlugin {
    pub config: PluginConfig,
    engine: Engine,
    pre: InstancePre<CallState>,
    policy: Option<policy_hooks::GuestIndices>,
    lifecycle: Option<lifecycle_hooks::GuestIndices>,
    shared: Arc<PluginShared>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.config.name)
            .field("hooks", &self.exported_hooks())
            .finish()
    }
}

/// Reads a plugin file, refusing what is not a component.
pub fn read_component(plugin: &str, path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::PluginMissing {
                plugin: plugin.to_owned(),
                path: path.to_owned(),
            }
        } else {
            Error::PluginRead {
                plugin: plugin.to_owned(),
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(Error::NotWasm {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
        });
    }
    // Bytes 4..8: version 1 + layer 0 is a core module; layer 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err(Error::CoreModule {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Splits `husk:plugin/policy-hooks@0.1.0` into the interface and version.
fn husk_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("husk:plugin/")?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

impl WasmPlugin {
    /// Loads (compiling through the cache if needed) and checks a plugin.
    pub fn load(
        engine: &Engine,
        linker: &Linker<CallState>,
        cache: &CompileCache,
        ticker: &EpochTicker,
        config: PluginConfig,
        store: Option<Arc<KvStore>>,
    ) -> Result<Self, Error> {
        let name = config.name.clone();
        let bytes = read_component(&name, &config.path)?;
        let (component, outcome) = cache.load(engine, &name, &bytes)?;
        tracing::debug!(plugin = %name, ?outcome, "plugin code loaded");
        let (has_policy, has_lifecycle) = check_world(engine, &component, &config)?;

        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Link {
                plugin: name.clone(),
                detail: format!(
                    "{e:#}; a plugin may import only husk:plugin@0.1.0 and WASI 0.2 interfaces"
                ),
            })?;
        let mismatch = |e: wasmtime::Error| Error::TypeMismatch {
            plugin: name.clone(),
            detail: format!("{e:#}"),
        };
        let policy = has_policy
            .then(|| policy_hooks::GuestIndices::new(&pre))
            .transpose()
            .map_err(mismatch)?;
        let lifecycle = has_lifecycle
            .then(|| lifecycle_hooks::GuestIndices::new(&pre))
            .transpose()
            .map_err(mismatch)?;

        let shared = Arc::new(PluginShared {
            name: name.clone(),
            config: config.config.clone(),
            store: if config.grants.store { store } else { None },
        });
        let plugin = WasmPlugin {
            config,
            engine: engine.clone(),
            pre,
            policy,
            lifecycle,
            shared,
        };
        plugin.probe(ticker)?;
        Ok(plugin)
    }

    /// Instantiates once and type-checks the exports, so a broken plugin
    /// fails at load, not at a container's create.
    fn probe(&self, ticker: &EpochTicker) -> Result<(), Error> {
        let name = &self.config.name;
        // A start function that never returns must not hang the loader; the
        // first instantiation may page in a large image, so allow 10x the
        // limit (at least 1 s).
        let limit = (self.config.time_limit * 10).max(Duration::from_secs(1));
        let (mut store, _stderr) = self.new_store(limit).map_err(|e| Error::Instantiate {
            plugin: name.clone(),
            detail: e.to_string(),
        })?;
        let _running = ticker.running(limit);
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            let detail = match e.downcast_ref::<MemoryCapExceeded>() {
                Some(m) => format!(
                    "it needs {} MiB of memory at start, above its cap of {} MiB; raise memory-limit-mib",
                    m.wanted_bytes >> 20,
                    self.config.memory_limit_mib
                ),
                None if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) => {
                    "its start-up did not finish within 10x its time limit".to_string()
                }
                None => format!("{e:#}"),
            };
            Error::Instantiate {
                plugin: name.clone(),
                detail,
            }
        })?;
        let mismatch = |e: wasmtime::Error| Error::TypeMismatch {
            plugin: name.clone(),
            detail: format!("{e:#}"),
        };
        if let Some(p) = &self.policy {
            p.load(&mut store, &instance).map_err(mismatch)?;
        }
        if let Some(l) = &self.lifecycle {
            l.load(&mut store, &instance).map_err(mismatch)?;
        }
        Ok(())
    }

    /// Whether the component exports `hook`.
    pub fn exports_hook(&self, hook: Hook) -> bool {
        match hook {
            Hook::Create => self.policy.is_some(),
            Hook::Start | Hook::Exit => self.lifecycle.is_some(),
        }
    }

    /// The hooks the component exports.
    pub fn exported_hooks(&self) -> Vec<Hook> {
        let mut hooks = Vec::new();
        if self.policy.is_some() {
            hooks.push(Hook::Create);
        }
        if self.lifecycle.is_some() {
            hooks.extend([Hook::Start, Hook::Exit]);
        }
        hooks
    }

    /// A store for one call under the time limit `limit`.
    fn new_store(&self, limit: Duration) -> Result<(Store<CallState>, MemoryOutputPipe), Error> {
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let wasi = self.config.grants.wasi_ctx(&self.config.name, &stderr)?;
        let mut store = Store::new(
            &self.engine,
            CallState {
                wasi,
                table: ResourceTable::new(),
                limiter: MemoryCap {
                    cap_bytes: (self.config.memory_limit_mib as usize) << 20,
                },
                shared: Arc::clone(&self.shared),
                logs: 0,
                began: Instant::now(),
                in_store: Duration::ZERO,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // The deadline counts wall clock; time spent in store operations
        // is given back, so a slow disk does not cut a plugin short. The
        // epoch moves on only once a call is past its deadline (see
        // `limits`): at each move, this call checks its own clock.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |ctx| {
            Ok(match ctx.data().past_limit(limit) {
                Some(_) => wasmtime::UpdateDeadline::Continue(1),
                None => wasmtime::UpdateDeadline::Interrupt,
            })
        });
        Ok((store, stderr))
    }

    /// One call: a fresh instance in a fresh store, under the limits. With
    /// `phases`, how long each part took.
    fn call<R>(
        &self,
        ticker: &EpochTicker,
        phases: Option<&mut CallPhases>,
        f: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, HookFailure> {
        let started = phases.is_some().then(Instant::now);
        let (mut store, stderr) = self
            .new_store(self.config.time_limit)
            .map_err(|e| HookFailure::Instantiate(e.to_string()))?;
        let _running = ticker.running(self.config.time_limit);
        let instance = self.pre.instantiate(&mut store);
        let instantiated = started.map(|_| Instant::now());
        let result = instance.and_then(|instance| f(&mut store, &instance));
        let called = started.map(|_| Instant::now());
        // Dropping the store returns the instance's slots to the pool, which
        // resets them to the pristine image (now, or once the caller of
        // `keeping_stores` is done).
        spend(store);
        if let (Some(p), Some(t0), Some(t1), Some(t2)) = (phases, started, instantiated, called) {
            *p = CallPhases {
                instantiate: t1 - t0,
                call: t2 - t1,
                drop: t2.elapsed(),
            };
        }
        result.map_err(|e| {
            classify(
                &e,
                self.config.time_limit,
                self.config.memory_limit_mib,
                &stderr,
            )
        })
    }

    /// Runs `on-create`. `None` when the plugin exports no policy hooks.
    pub fn on_create(
        &self,
        ticker: &EpochTicker,
        view: &ContainerView,
    ) -> Option<Result<Verdict, HookFailure>> {
        self.on_create_timed(ticker, view, None)
    }

    /// [`Self::on_create`], recording how long each part of the call took
    /// in `phases` (for benchmarks).
    pub fn on_create_timed(
        &self,
        ticker: &EpochTicker,
        view: &ContainerView,
        phases: Option<&mut CallPhases>,
    ) -> Option<Result<Verdict, HookFailure>> {
        let indices = self.policy.as_ref()?;
        Some(self.call(ticker, phases, |store, instance| {
            indices
                .load(&mut *store, instance)?
                .call_on_create(store, view)
        }))
    }

    /// Runs `on-start`. `None` when the plugin exports no lifecycle hooks.
    pub fn on_start(
        &self,
        ticker: &EpochTicker,
        event: &StartEvent,
    ) -> Option<Result<(), HookFailure>> {
        let indices = self.lifecycle.as_ref()?;
        Some(self.call(ticker, None, |store, instance| {
            indices
                .load(&mut *store, instance)?
                .call_on_start(store, event)
        }))
    }

    /// Runs `on-exit`. `None` when the plugin exports no lifecycle hooks.
    pub fn on_exit(
        &self,
        ticker: &EpochTicker,
        event: &ExitEvent,
    ) -> Option<Result<(), HookFailure>> {
        let indices = self.lifecycle.as_ref()?;
        Some(self.call(ticker, None, |store, instance| {
            indices
                .load(&mut *store, instance)?
                .call_on_exit(store, event)
        }))
    }
}

thread_local! {
    /// Stores of finished calls kept by [`keeping_stores`] on this thread.
    static KEPT_STORES: std::cell::RefCell<Option<Vec<Store<CallState>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The stores of calls that ended inside [`keeping_stores`]: dropping it
/// drops them (each resets its pool slot for the next call).
#[derive(Default)]
pub struct SpentStores(Vec<Store<CallState>>);

impl SpentStores {
    /// How many stores are kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs `f`, keeping the stores of the calls it makes on this thread
/// instead of dropping them as each call ends: the caller drops them when
/// it is done (the plugin service, once the shim has its reply), so that
/// resetting the pool slots (a `PAGEMAP_SCAN` of each memory and a copy of
/// the pages the call wrote) is not part of what the caller waits for. A
/// kept store is never used again: the next call still gets a fresh one.
pub fn keeping_stores<R>(f: impl FnOnce() -> R) -> (R, SpentStores) {
    let outer = KEPT_STORES.with(|k| k.replace(Some(Vec::new())));
    let result = f();
    let kept = KEPT_STORES.with(|k| k.replace(outer)).unwrap_or_default();
    (result, SpentStores(kept))
}

/// Drops `store` now, or keeps it for [`keeping_stores`].
fn spend(store: Store<CallState>) {
    KEPT_STORES.with(|k| match k.borrow_mut().as_mut() {
        Some(kept) => kept.push(store),
        None => drop(store),
    });
}

/// Checks the component's husk:plugin exports and imports: the right
/// version, at least one hook interface, and grants for what it imports.
fn check_world(
    engine: &Engine,
    component: &Component,
    config: &PluginConfig,
) -> Result<(bool, bool), Error> {
    let name = &config.name;
    let ty = component.component_type();
    let mut exports = Vec::new();
    let (mut policy, mut lifecycle) = (false, false);
    for (export, _) in ty.exports(engine) {
        exports.push(export.to_owned());
        if let Some((iface, version)) = husk_name(export) {
            if version != bindings::WIT_VERSION {
                return Err(Error::IncompatibleVersion {
                    plugin: name.clone(),
                    found: export.to_owned(),
                    host: bindings::WIT_VERSION,
                });
            }
            match iface {
                "policy-hooks" => policy = true,
                "lifecycle-hooks" => lifecycle = true,
                _ => {}
            }
        }
    }
    if !policy && !lifecycle {
        return Err(Error::WrongWorld {
            plugin: name.clone(),
            expected: format!(
                "{} or {}",
                bindings::POLICY_EXPORT,
                bindings::LIFECYCLE_EXPORT
            ),
            found: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        });
    }
    for (import, _) in ty.imports(engine) {
        if let Some((_, version)) = husk_name(import) {
            if version != bindings::WIT_VERSION {
                return Err(Error::IncompatibleVersion {
                    plugin: name.clone(),
                    found: import.to_owned(),
                    host: bindings::WIT_VERSION,
                });
            }
        }
        if import == bindings::STORE_IMPORT && !config.grants.store {
            return Err(Error::NotGranted {
                plugin: name.clone(),
                import: import.to_owned(),
                grant: "store",
            });
        }
    }
    let mut have = Vec::new();
    if policy {
        have.push(Hook::Create);
    }
    if lifecycle {
        have.extend([Hook::Start, Hook::Exit]);
    }
    for hook in config.hooks.iter().flatten() {
        if !have.contains(hook) {
            return Err(Error::HookNotExported {
                plugin: name.clone(),
                hook: hook.name(),
                exports: exports.join(", "),
            });
        }
    }
    Ok((policy, lifecycle))
}

/// Turns a call's error into a [`HookFailure`], with the plugin's stderr.
fn classify(
    e: &wasmtime::Error,
    limit: Duration,
    memory_mib: u64,
    stderr: &MemoryOutputPipe,
) -> HookFailure {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return HookFailure::Timeout(limit);
    }
    if e.downcast_ref::<MemoryCapExceeded>().is_some() {
        return HookFailure::MemoryCap {
            cap_mib: memory_mib,
        };
    }
    let mut msg = format!("{e:#}");
    let err = stderr.contents();
    if !err.is_empty() {
        let text = String::from_utf8_lossy(&err);
        let tail: String = text
            .chars()
            .rev()
            .take(1024)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        msg.push_str("; the plugin's stderr: ");
        msg.push_str(tail.trim());
    }
    HookFailure::Trap(msg)
}
