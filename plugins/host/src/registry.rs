//! The loaded plugins, in order, and the hooks the shim calls.
//!
//! [`PluginHost`] holds the current [`Registry`] behind an `ArcSwap`: a hook
//! takes its own reference at the start and runs to the end on that
//! registry, so a reload swaps in a new one without disturbing calls in
//! flight (the old one is freed when its last call returns).
//!
//! At create, plugins run in order (`order`, then file order). A plugin's
//! edits are applied to the spec and validated at once, and the next plugin
//! sees the edited container. The first enforced deny stops the chain. A
//! plugin in audit mode has its would-deny and would-mutate logged and
//! reported but not enforced. A failure (trap, timeout, memory cap, invalid
//! mutation) is resolved by the plugin's on-error policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use oci_spec::runtime::Spec;
use serde::Deserialize;
use serde_json::Value;
use wasmtime::component::Linker;
use wasmtime::Engine;

use crate::bindings::{ContainerView, Edit, ExitEvent, StartEvent, Verdict};
use crate::cache::CompileCache;
use crate::config::{Hook, HostConfig, Kind, Mode, OnError, PluginConfig};
use crate::kv::KvStore;
use crate::limits::EpochTicker;
use crate::native::NativePlugin;
use crate::view::{self, ContainerContext};
use crate::wasm::{self, CallPhases, CallState, WasmPlugin};
use crate::{mutation, Error, HookFailure};

/// A loaded plugin of either kind.
#[derive(Debug)]
pub enum Plugin {
    Wasm(WasmPlugin),
    Native(NativePlugin),
}

impl Plugin {
    pub fn config(&self) -> &PluginConfig {
        match self {
            Plugin::Wasm(p) => &p.config,
            Plugin::Native(p) => &p.config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config().name
    }

    /// Whether it runs at `hook` ([`Self::hooks`] without building the
    /// list).
    pub fn has_hook(&self, hook: Hook) -> bool {
        let exported = match self {
            Plugin::Wasm(p) => p.exports_hook(hook),
            Plugin::Native(p) => p.exports_hook(hook),
        };
        exported && self.config().wants(hook)
    }

    /// The hooks it runs at: what it exports, narrowed by its config.
    pub fn hooks(&self) -> Vec<Hook> {
        let exported = match self {
            Plugin::Wasm(p) => p.exported_hooks(),
            Plugin::Native(p) => p.exported_hooks(),
        };
        exported
            .into_iter()
            .filter(|h| self.config().wants(*h))
            .collect()
    }
}

/// One configuration's plugins, loaded.
#[derive(Debug)]
pub struct Registry {
    pub config: HostConfig,
    pub plugins: Vec<Plugin>,
}

/// What one plugin's hook did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Allowed,
    Denied(String),
    Mutated(Vec<Edit>),
    /// Audit mode: it would have denied (or failed with on-error deny).
    WouldDeny(String),
    /// Audit mode: it would have made these edits.
    WouldMutate(Vec<Edit>),
    /// It failed and its on-error policy is allow: skipped.
    FailedOpen(HookFailure),
    /// It failed and its on-error policy is deny.
    FailedClosed(HookFailure),
    /// A lifecycle hook ran.
    Ran,
    /// A lifecycle hook failed (logged; lifecycle hooks cannot stop a container).
    Failed(HookFailure),
}

/// One plugin's part in a hook.
#[derive(Debug, Clone, PartialEq)]
pub struct HookReport {
    pub plugin: String,
    pub hook: Hook,
    pub mode: Mode,
    pub elapsed: Duration,
    pub outcome: Outcome,
}

/// Which plugin denied the container, and why (the type the plugin
/// service sends its clients).
pub use husk_plugin_client::protocol::Denial;

/// The result of `on_create` over all plugins.
#[derive(Debug, Clone)]
pub struct Decision {
    pub denial: Option<Denial>,
    /// Every edit applied, with the plugin that asked for it.
    pub edits: Vec<(String, Edit)>,
    /// The spec to create the container with (edited, validated), when the
    /// view carried a spec and the container is not denied. From
    /// [`PluginHost::on_create_json`]: only when edits changed it (the
    /// caller has the spec it sent).
    pub spec: Option<Spec>,
    /// The edited spec's JSON when enforced edits changed it and the
    /// container is not denied (what [`Self::spec`] serializes to).
    pub edited_json: Option<Value>,
    /// The view the last plugin saw; [`Self::view`] is the view after all
    /// edits.
    seen: ContainerView,
    /// The spec's JSON after all edits, when the last edits are not in
    /// `seen` yet.
    unseen: Option<Value>,
    pub reports: Vec<HookReport>,
}

impl Decision {
    /// The final spec's annotations, sorted by key (for the lifecycle
    /// hooks).
    pub fn annotations(&self) -> Vec<(String, String)> {
        match &self.unseen {
            Some(value) => view::annotations(value),
            None => self
                .seen
                .annotations
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
        }
    }

    /// The view after all edits (built now if the last plugin's edits are
    /// not in the view it saw: the chain does not build a view no plugin
    /// sees).
    pub fn view(&self) -> ContainerView {
        match &self.unseen {
            Some(value) => view::build(&self.seen.id, value, &view::context_of(&self.seen)),
            None => self.seen.clone(),
        }
    }

    /// [`Self::edited_json`] as text: the last view's `spec-json` when
    /// that view already shows every edit (it was serialized for the
    /// plugins), else serialized now.
    pub fn edited_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        let edited = self.edited_json.as_ref()?;
        Some(match &self.unseen {
            None => std::borrow::Cow::Borrowed(self.seen.spec_json.as_str()),
            Some(_) => std::borrow::Cow::Owned(edited.to_string()),
        })
    }

    pub fn denial(&self) -> Option<&Denial> {
        self.denial.as_ref()
    }

    pub fn is_allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// The combined verdict, as one WIT verdict.
    pub fn verdict(&self) -> Verdict {
        match &self.denial {
            Some(d) => Verdict::Deny(d.to_string()),
            None if self.edits.is_empty() => Verdict::Allow,
            None => Verdict::Mutate(self.edits.iter().map(|(_, e)| e.clone()).collect()),
        }
    }

    /// Audit-mode would-denies: (plugin, reason).
    pub fn audit_denials(&self) -> Vec<(&str, &str)> {
        self.reports
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::WouldDeny(reason) => Some((r.plugin.as_str(), reason.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// The plugin host: one per shim (or per `husk plugin test`).
pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    ticker: EpochTicker,
    current: ArcSwap<Registry>,
    stores: Mutex<HashMap<String, Arc<KvStore>>>,
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("registry", &self.current.load())
            .finish()
    }
}

impl PluginHost {
    /// Loads every plugin of `config` (compiling what the cache lacks).
    pub fn new(config: HostConfig) -> Result<Self, Error> {
        let engine = crate::engine::new_engine()?;
        let linker = wasm::new_linker(&engine)?;
        let ticker = EpochTicker::start(&engine);
        let host = PluginHost {
            current: ArcSwap::from_pointee(Registry {
                config: HostConfig::default(),
                plugins: Vec::new(),
            }),
            engine,
            linker,
            ticker,
            stores: Mutex::new(HashMap::new()),
            reload_lock: Mutex::new(()),
        };
        let registry = host.load_registry(config)?;
        host.current.store(Arc::new(registry));
        Ok(host)
    }

    /// Reads a TOML config file and loads its plugins.
    pub fn from_config_file(path: &Path) -> Result<Self, Error> {
        Self::new(HostConfig::load(path)?)
    }

    /// A host with no plugins (every hook allows).
    pub fn empty() -> Result<Self, Error> {
        Self::new(HostConfig::default())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The store of plugin `name` (created on first use; shared by all its
    /// calls and kept across reloads).
    pub fn store(&self, name: &str) -> Arc<KvStore> {
        let config = self.current.load().config.clone();
        self.store_for(&config, name)
    }

    /// The current registry (what a hook starting now would run).
    pub fn registry(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    /// Compiles a component into the cache without loading it anywhere:
    /// what `husk plugin install` does.
    pub fn precompile(&self, cache_dir: &Path, plugin: &str, path: &Path) -> Result<(), Error> {
        let bytes = wasm::read_component(plugin, path)?;
        CompileCache::new(&self.engine, cache_dir).load(&self.engine, plugin, &bytes)?;
        Ok(())
    }

    fn store_for(&self, config: &HostConfig, plugin: &str) -> Arc<KvStore> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(stores.entry(plugin.to_owned()).or_insert_with(|| {
            Arc::new(match &config.state_dir {
                Some(dir) => KvStore::persistent(&dir.join(format!("{plugin}.json"))),
                None => KvStore::in_memory(),
            })
        }))
    }

    fn load_registry(&self, config: HostConfig) -> Result<Registry, Error> {
        let cache = CompileCache::new(&self.engine, &config.cache_dir);
        let mut plugins = Vec::with_capacity(config.plugins.len());
        for pc in &config.plugins {
            let started = Instant::now();
            let plugin = match pc.kind {
                Kind::Wasm => {
                    let store = pc.grants.store.then(|| self.store_for(&config, &pc.name));
                    Plugin::Wasm(WasmPlugin::load(
                        &self.engine,
                        &self.linker,
                        &cache,
                        &self.ticker,
                        pc.clone(),
                        store,
                    )?)
                }
                Kind::Native => Plugin::Native(NativePlugin::load(pc.clone())?),
            };
            tracing::info!(plugin = %pc.name, hooks = ?plugin.hooks(), mode = ?pc.mode,
                elapsed = ?started.elapsed(), "plugin loaded");
            plugins.push(plugin);
        }
        Ok(Registry { config, plugins })
    }

    /// Replaces the plugins with those of `config`. On error the current
    /// plugins stay. Calls in flight finish on the plugins they started with.
    pub fn reload_with(&self, config: HostConfig) -> Result<(), Error> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let registry = self.load_registry(config)?;
        let names: Vec<_> = registry
            .plugins
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        self.current.store(Arc::new(registry));
        tracing::info!(plugins = ?names, "plugins reloaded");
        Ok(())
    }

    /// Re-reads the config file the current plugins came from.
    pub fn reload(&self) -> Result<(), Error> {
        let Some(path) = self.current.load().config.source.clone() else {
            return Ok(());
        };
        self.reload_with(HostConfig::load(&path)?)
    }

    /// One plugin's own verdict on `view`, without applying anything or
    /// consulting the others (`husk plugin test`, benchmarks). `None` when
    /// no loaded plugin of that name has a create hook.
    pub fn verdict_of(
        &self,
        plugin: &str,
        view: &ContainerView,
    ) -> Option<Result<Verdict, HookFailure>> {
        let registry = self.current.load_full();
        match registry.plugins.iter().find(|p| p.name() == plugin)? {
            Plugin::Wasm(p) => p.on_create(&self.ticker, view),
            Plugin::Native(p) => p.on_create(view),
        }
    }

    /// [`Self::verdict_of`], with how long each part of the call took (a
    /// component plugin's; `None` for a native one). For benchmarks.
    pub fn verdict_timed(
        &self,
        plugin: &str,
        view: &ContainerView,
    ) -> Option<(Result<Verdict, HookFailure>, Option<CallPhases>)> {
        let registry = self.current.load_full();
        match registry.plugins.iter().find(|p| p.name() == plugin)? {
            Plugin::Wasm(p) => {
                let mut phases = CallPhases::default();
                let v = p.on_create_timed(&self.ticker, view, Some(&mut phases))?;
                Some((v, Some(phases)))
            }
            Plugin::Native(p) => Some((p.on_create(view)?, None)),
        }
    }

    /// Runs every create hook on the container `id` with spec `spec`.
    pub fn on_create_spec(&self, id: &str, spec: &Spec, ctx: &ContainerContext) -> Decision {
        // The spec goes to JSON once: the view is built from that value and
        // edits are applied to it, without parsing `spec_json` back.
        match serde_json::to_value(spec) {
            Ok(value) => {
                let view = view::build(id, &value, ctx);
                let mut d = self.create_hooks(view, Some(value));
                if d.denial.is_none() && d.spec.is_none() {
                    d.spec = Some(spec.clone());
                }
                d
            }
            Err(_) => self.on_create(&view::from_spec(id, spec, ctx)),
        }
    }

    /// Runs every create hook on the container `id` whose spec is the JSON
    /// text `spec_json` (a bundle's `config.json`, as the plugin service
    /// gets it): parsed once, as an OCI spec (which fills in what the
    /// runtime would default, so the plugins see what would run), then
    /// handled as JSON. The decision's `spec` and `edited_json` are set
    /// only when edits changed the spec. Err: why the text is not a spec.
    pub fn on_create_json(
        &self,
        id: &str,
        spec_json: &[u8],
        ctx: &ContainerContext,
    ) -> Result<Decision, String> {
        // Without serde_path_to_error's bookkeeping: the path is looked up
        // only for the message of a spec that does not parse.
        let spec: Spec = match serde_json::from_slice(spec_json) {
            Ok(spec) => spec,
            Err(e) => {
                return Err(match husk_runtime::spec::parse(spec_json) {
                    Err(reason) => reason,
                    Ok(_) => e.to_string(),
                })
            }
        };
        let value = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
        let view = view::build(id, &value, ctx);
        Ok(self.create_hooks(view, Some(value)))
    }

    /// Runs every create hook, in order, on `view`. Edits are applied to the
    /// spec in `view.spec_json` (when it parses) and validated per plugin.
    pub fn on_create(&self, view: &ContainerView) -> Decision {
        let spec_value: Option<Value> = serde_json::from_str(&view.spec_json).ok();
        let spec: Option<Spec> = spec_value.as_ref().and_then(|v| Spec::deserialize(v).ok());
        let mut d = self.create_hooks(view.clone(), spec_value);
        if d.denial.is_none() && d.spec.is_none() {
            d.spec = spec;
        }
        d
    }

    /// The create hooks on `view`, whose spec is `spec_value` (as JSON, the
    /// form edits are applied to). The decision's `spec` is set only when
    /// edits were applied.
    fn create_hooks(&self, mut view: ContainerView, mut spec_value: Option<Value>) -> Decision {
        let registry = self.current.load_full();
        let mut edits = Vec::new();
        let mut reports = Vec::new();
        let mut denial = None;
        // The spec before the first applied edit, to tell whether the
        // edits changed it; the typed spec of the last applied edits (set:
        // `spec_value` is validated).
        let mut original: Option<Value> = None;
        let mut spec: Option<Spec> = None;
        // The view lags the spec's last edits: rebuilt only before a plugin
        // that sees it.
        let mut view_behind = false;

        for plugin in &registry.plugins {
            if !plugin.has_hook(Hook::Create) {
                continue;
            }
            let cfg = plugin.config();
            if view_behind {
                if let Some(value) = &spec_value {
                    view = view::build(&view.id, value, &view::context_of(&view));
                }
                view_behind = false;
            }
            let started = Instant::now();
            let result = match plugin {
                Plugin::Wasm(p) => p.on_create(&self.ticker, &view),
                Plugin::Native(p) => p.on_create(&view),
            };
            let Some(result) = result else { continue };
            // Apply and validate edits now, so an invalid mutation is this
            // plugin's failure.
            let result = result.and_then(|verdict| match verdict {
                Verdict::Mutate(list) if cfg.mode == Mode::Enforce => match &spec_value {
                    Some(v) => mutation::apply_edits(v.clone(), &list)
                        .and_then(|edited| {
                            // Edits that leave a spec the chain already
                            // validated as it was (a later policy asking
                            // for what an earlier one did): validating it
                            // again would give the same answer.
                            if spec.is_some() && edited == *v {
                                return Ok(None);
                            }
                            mutation::check(&edited, &list).map(|typed| Some((edited, typed)))
                        })
                        .map(|applied| (Verdict::Mutate(list), applied))
                        .map_err(|e| HookFailure::InvalidMutation(e.to_string())),
                    None => Ok((Verdict::Mutate(list), None)),
                },
                Verdict::Mutate(list) => match &spec_value {
                    // Audit: validated for the report, never applied.
                    Some(v) => mutation::apply_value(v.clone(), &list)
                        .map(|_| (Verdict::Mutate(list), None))
                        .map_err(|e| HookFailure::InvalidMutation(e.to_string())),
                    None => Ok((Verdict::Mutate(list), None)),
                },
                other => Ok((other, None)),
            });
            let elapsed = started.elapsed();
            let outcome = match (result, cfg.mode) {
                (Ok((Verdict::Allow, _)), _) => Outcome::Allowed,
                (Ok((Verdict::Deny(reason), _)), Mode::Enforce) => Outcome::Denied(reason),
                (Ok((Verdict::Deny(reason), _)), Mode::Audit) => Outcome::WouldDeny(reason),
                (Ok((Verdict::Mutate(list), applied)), Mode::Enforce) => {
                    if let Some((value, new_spec)) = applied {
                        let before = spec_value.replace(value);
                        if original.is_none() {
                            original = before;
                        }
                        spec = Some(new_spec);
                        view_behind = true;
                    }
                    edits.extend(list.iter().map(|e| (cfg.name.clone(), e.clone())));
                    Outcome::Mutated(list)
                }
                (Ok((Verdict::Mutate(list), _)), Mode::Audit) => Outcome::WouldMutate(list),
                (Err(f), mode) => match (cfg.on_error, mode) {
                    (OnError::Allow, _) => Outcome::FailedOpen(f),
                    (OnError::Deny, Mode::Enforce) => Outcome::FailedClosed(f),
                    (OnError::Deny, Mode::Audit) => {
                        Outcome::WouldDeny(format!("plugin failed: {f}"))
                    }
                },
            };
            log_outcome(&cfg.name, &view.id, elapsed, &outcome);
            match &outcome {
                Outcome::Denied(reason) => {
                    denial = Some(Denial {
                        plugin: cfg.name.clone(),
                        reason: reason.clone(),
                    })
                }
                Outcome::FailedClosed(f) => {
                    denial = Some(Denial {
                        plugin: cfg.name.clone(),
                        reason: format!("plugin failed ({f}) and its on-error policy is deny"),
                    })
                }
                _ => {}
            }
            reports.push(HookReport {
                plugin: cfg.name.clone(),
                hook: Hook::Create,
                mode: cfg.mode,
                elapsed,
                outcome,
            });
            if denial.is_some() {
                break;
            }
        }
        let changed = match (&original, &spec_value) {
            (Some(before), Some(after)) => before != after,
            _ => false,
        };
        let allowed = denial.is_none();
        Decision {
            spec: spec.filter(|_| allowed),
            edited_json: spec_value.as_ref().filter(|_| allowed && changed).cloned(),
            denial,
            edits,
            unseen: spec_value.filter(|_| view_behind),
            seen: view,
            reports,
        }
    }

    /// Tells every lifecycle plugin that the container started.
    pub fn on_start(&self, event: &StartEvent) -> Vec<HookReport> {
        self.lifecycle(Hook::Start, &event.id, |p| match p {
            Plugin::Wasm(w) => w.on_start(&self.ticker, event),
            Plugin::Native(n) => n.on_start(event),
        })
    }

    /// Tells every lifecycle plugin that the container exited.
    pub fn on_exit(&self, event: &ExitEvent) -> Vec<HookReport> {
        self.lifecycle(Hook::Exit, &event.id, |p| match p {
            Plugin::Wasm(w) => w.on_exit(&self.ticker, event),
            Plugin::Native(n) => n.on_exit(event),
        })
    }

    fn lifecycle(
        &self,
        hook: Hook,
        id: &str,
        call: impl Fn(&Plugin) -> Option<Result<(), HookFailure>>,
    ) -> Vec<HookReport> {
        let registry = self.current.load_full();
        let mut reports = Vec::new();
        for plugin in &registry.plugins {
            if !plugin.has_hook(hook) {
                continue;
            }
            let started = Instant::now();
            let Some(result) = call(plugin) else { continue };
            let elapsed = started.elapsed();
            let outcome = match result {
                Ok(()) => Outcome::Ran,
                Err(f) => Outcome::Failed(f),
            };
            log_outcome(plugin.name(), id, elapsed, &outcome);
            reports.push(HookReport {
                plugin: plugin.name().to_owned(),
                hook,
                mode: plugin.config().mode,
                elapsed,
                outcome,
            });
        }
        reports
    }
}

fn log_outcome(plugin: &str, container: &str, elapsed: Duration, outcome: &Outcome) {
    match outcome {
        Outcome::Allowed | Outcome::Ran => {
            tracing::debug!(plugin, container, ?elapsed, ?outcome, "plugin hook")
        }
        // Debug like an allow: a create's edits are reported to its caller
        // (`husk-policy.json`), and an info line per plugin and create was
        // a measurable part of what plugins add to a create.
        Outcome::Mutated(_) => {
            tracing::debug!(plugin, container, ?elapsed, ?outcome, "plugin hook")
        }
        Outcome::Denied(reason) => {
            tracing::warn!(plugin, container, reason, "container denied by policy")
        }
        Outcome::WouldDeny(reason) => {
            tracing::warn!(target: "husk::audit", plugin, container, reason, "audit: policy would deny")
        }
        Outcome::WouldMutate(edits) => {
            tracing::info!(target: "husk::audit", plugin, container, ?edits, "audit: policy would mutate")
        }
        Outcome::FailedOpen(f) | Outcome::FailedClosed(f) | Outcome::Failed(f) => {
            tracing::error!(plugin, container, failure = %f, ?outcome, "plugin failed")
        }
    }
}
