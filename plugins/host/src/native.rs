//! Native plugins: shared libraries with the C ABI of
//! `plugins/host/include/husk_plugin.h`, loaded with `libloading`.
//!
//! Same hooks and semantics as component plugins, JSON in and out. They run
//! in the host's process without a sandbox: no memory cap, no preemption
//! (a call over its time limit is logged, and counted as a failure after
//! it returns), no grants (they can do anything the shim can). For trusted
//! operators who want zero sandbox cost.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::bindings::{ContainerView, ExitEvent, StartEvent, Verdict};
use crate::config::{Hook, PluginConfig};
use crate::{Error, HookFailure};

/// The C ABI version this host speaks.
pub const ABI_VERSION: u32 = 1;
pub const HOOK_CREATE: u32 = 1;
pub const HOOK_START: u32 = 2;
pub const HOOK_EXIT: u32 = 4;

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type HooksFn = unsafe extern "C" fn() -> u32;
type CallFn = unsafe extern "C" fn(u32, *const u8, usize, *mut *mut u8, *mut usize) -> i32;
type FreeFn = unsafe extern "C" fn(*mut u8, usize);

/// A loaded native plugin.
pub struct NativePlugin {
    pub config: PluginConfig,
    hooks: u32,
    call: CallFn,
    free: FreeFn,
    // Declared last so the function pointers above are dropped before the
    // library is unloaded (they are plain pointers; nothing uses them after).
    _lib: libloading::Library,
}

impl std::fmt::Debug for NativePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePlugin")
            .field("name", &self.config.name)
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl NativePlugin {
    pub fn load(config: PluginConfig) -> Result<Self, Error> {
        let path = config.path.clone();
        let err = |detail: String| Error::Native {
            plugin: config.name.clone(),
            path: path.clone(),
            detail,
        };
        if !path.exists() {
            return Err(Error::PluginMissing {
                plugin: config.name.clone(),
                path,
            });
        }
        // SAFETY: loading a library runs its initializers with the host's
        // full authority. That is the contract of a native plugin: the
        // operator configured it as trusted code (`kind = "native"`).
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| err(format!("cannot load it: {e}")))?;
        // SAFETY: each symbol is looked up with the exact signature
        // husk_plugin.h declares; a library exporting the name with another
        // signature breaks the ABI contract, which we cannot check.
        let (version, hooks, call, free) = unsafe {
            let sym = |name: &[u8]| String::from_utf8_lossy(&name[..name.len() - 1]).into_owned();
            let version: AbiVersionFn = *lib
                .get::<AbiVersionFn>(b"husk_plugin_abi_version\0")
                .map_err(|e| {
                    err(format!(
                        "no `{}` symbol ({e}); is it a husk plugin built against husk_plugin.h?",
                        sym(b"husk_plugin_abi_version\0")
                    ))
                })?;
            let hooks: HooksFn = *lib
                .get::<HooksFn>(b"husk_plugin_hooks\0")
                .map_err(|e| err(format!("no `husk_plugin_hooks` symbol: {e}")))?;
            let call: CallFn = *lib
                .get::<CallFn>(b"husk_plugin_call\0")
                .map_err(|e| err(format!("no `husk_plugin_call` symbol: {e}")))?;
            let free: FreeFn = *lib
                .get::<FreeFn>(b"husk_plugin_free\0")
                .map_err(|e| err(format!("no `husk_plugin_free` symbol: {e}")))?;
            (version(), hooks(), call, free)
        };
        if version != ABI_VERSION {
            return Err(err(format!(
                "it speaks native ABI version {version}, this host speaks {ABI_VERSION}; rebuild it against this husk's husk_plugin.h"
            )));
        }
        let plugin = NativePlugin {
            config,
            hooks,
            call,
            free,
            _lib: lib,
        };
        for hook in plugin.config.hooks.iter().flatten() {
            if !plugin.exported_hooks().contains(hook) {
                return Err(Error::HookNotExported {
                    plugin: plugin.config.name.clone(),
                    hook: hook.name(),
                    exports: format!("native hooks mask {:#x}", plugin.hooks),
                });
            }
        }
        Ok(plugin)
    }

    /// Whether the library exports `hook`.
    pub fn exports_hook(&self, hook: Hook) -> bool {
        let bit = match hook {
            Hook::Create => HOOK_CREATE,
            Hook::Start => HOOK_START,
            Hook::Exit => HOOK_EXIT,
        };
        self.hooks & bit != 0
    }

    pub fn exported_hooks(&self) -> Vec<Hook> {
        let mut v = Vec::new();
        if self.hooks & HOOK_CREATE != 0 {
            v.push(Hook::Create);
        }
        if self.hooks & HOOK_START != 0 {
            v.push(Hook::Start);
        }
        if self.hooks & HOOK_EXIT != 0 {
            v.push(Hook::Exit);
        }
        v
    }

    fn invoke(&self, hook: u32, input: &serde_json::Value) -> Result<Vec<u8>, HookFailure> {
        let input = serde_json::to_vec(input).map_err(|e| HookFailure::Native(e.to_string()))?;
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: usize = 0;
        let started = Instant::now();
        // SAFETY: `input` outlives the call; `out`/`out_len` are valid
        // pointers to locals. The plugin promises (husk_plugin.h) not to
        // unwind and to return a buffer of `out_len` bytes or NULL.
        let rc = unsafe { (self.call)(hook, input.as_ptr(), input.len(), &mut out, &mut out_len) };
        let elapsed = started.elapsed();
        let bytes = if out.is_null() {
            Vec::new()
        } else {
            // SAFETY: per the ABI, `out` points to `out_len` initialized
            // bytes owned by the plugin until we pass them to `free`.
            let v = unsafe { std::slice::from_raw_parts(out, out_len) }.to_vec();
            // SAFETY: handing back exactly the buffer the plugin returned.
            unsafe { (self.free)(out, out_len) };
            v
        };
        if rc != 0 {
            return Err(HookFailure::Native(format!(
                "returned {rc}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if elapsed > self.config.time_limit {
            tracing::warn!(plugin = %self.config.name, ?elapsed, limit = ?self.config.time_limit,
                "native plugin overran its time limit (native plugins cannot be interrupted)");
            return Err(HookFailure::Timeout(self.config.time_limit));
        }
        Ok(bytes)
    }

    fn input(&self, key: &str, value: serde_json::Value) -> serde_json::Value {
        json!({ "plugin": self.config.name, "config": self.config.config, key: value })
    }

    pub fn on_create(&self, view: &ContainerView) -> Option<Result<Verdict, HookFailure>> {
        if self.hooks & HOOK_CREATE == 0 {
            return None;
        }
        let view = match serde_json::to_value(view) {
            Ok(v) => v,
            Err(e) => return Some(Err(HookFailure::Native(e.to_string()))),
        };
        Some(
            self.invoke(HOOK_CREATE, &self.input("container", view))
                .and_then(|out| {
                    serde_json::from_slice(&out).map_err(|e| {
                        HookFailure::Native(format!(
                            "its verdict is not valid JSON of a verdict ({e}): {}",
                            String::from_utf8_lossy(&out)
                        ))
                    })
                }),
        )
    }

    pub fn on_start(&self, event: &StartEvent) -> Option<Result<(), HookFailure>> {
        if self.hooks & HOOK_START == 0 {
            return None;
        }
        let ev = serde_json::to_value(event).unwrap_or_default();
        Some(self.invoke(HOOK_START, &self.input("event", ev)).map(drop))
    }

    pub fn on_exit(&self, event: &ExitEvent) -> Option<Result<(), HookFailure>> {
        if self.hooks & HOOK_EXIT == 0 {
            return None;
        }
        let ev = serde_json::to_value(event).unwrap_or_default();
        Some(self.invoke(HOOK_EXIT, &self.input("event", ev)).map(drop))
    }
}

/// Whether a file looks like a shared library (ELF).
pub fn is_elf(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false)
}
