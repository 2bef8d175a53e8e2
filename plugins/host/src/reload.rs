//! Hot reload: on SIGHUP, or when the config file (or a plugin file it
//! names) changes, the host reloads its plugins.
//!
//! A reload loads and compiles the new set completely before swapping it in
//! ([`PluginHost::reload_with`]); a config that fails to load leaves the old
//! plugins in place (and is logged). Hooks already running finish on the
//! plugins they started with.
//!
//! Changes are noticed by polling the files' size, mtime and inode (cheap:
//! a few `stat`s per interval), which also catches the atomic
//! write-then-rename editors and `husk plugin install` use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::PluginHost;

/// How the watcher looks for changes.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Reload on SIGHUP.
    pub sighup: bool,
    /// Poll the config and plugin files this often (`None`: no polling).
    pub poll: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            sighup: true,
            poll: Some(Duration::from_millis(500)),
        }
    }
}

/// The running watcher; dropping it stops the thread (and SIGHUP handling).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    sig_id: Option<signal_hook::SigId>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(id) = self.sig_id.take() {
            signal_hook::low_level::unregister(id);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Size, mtime and inode of each watched file (`None`: missing).
pub(crate) type Stamp = Vec<crate::protocol::Stamp>;

/// The config file and every plugin file it names.
pub(crate) fn watched_files(host: &PluginHost) -> Vec<PathBuf> {
    let reg = host.registry();
    reg.config
        .source
        .iter()
        .cloned()
        .chain(reg.config.plugins.iter().map(|p| p.path.clone()))
        .collect()
}

pub(crate) fn stamp(files: &[PathBuf]) -> Stamp {
    files.iter().map(|f| crate::protocol::stamp(f)).collect()
}

/// Starts watching for reload triggers.
pub fn watch(host: &Arc<PluginHost>, options: WatchOptions) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    let sig_id = if options.sighup {
        // signal_hook chains to earlier handlers and only sets a flag in the
        // handler itself, so this is async-signal-safe and coexists with the
        // shim's own signal handling.
        Some(signal_hook::flag::register(
            signal_hook::consts::SIGHUP,
            Arc::clone(&hup),
        )?)
    } else {
        None
    };
    let weak: Weak<PluginHost> = Arc::downgrade(host);
    let thread_stop = Arc::clone(&stop);
    let step = Duration::from_millis(50);
    let thread = std::thread::Builder::new()
        .name("husk-plugin-reload".into())
        .spawn(move || {
            let mut files = weak.upgrade().map(|h| watched_files(&h)).unwrap_or_default();
            let mut last = stamp(&files);
            let mut since_poll = Duration::ZERO;
            while !thread_stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                since_poll += step;
                let Some(host) = weak.upgrade() else { return };
                let mut reason = None;
                if hup.swap(false, Ordering::Relaxed) {
                    reason = Some("SIGHUP");
                }
                if let Some(poll) = options.poll {
                    if since_poll >= poll {
                        since_poll = Duration::ZERO;
                        let now = stamp(&files);
                        if now != last {
                            reason = reason.or(Some("a config or plugin file changed"));
                            last = now;
                        }
                    }
                }
                if let Some(reason) = reason {
                    tracing::info!(reason, "reloading plugins");
                    match host.reload() {
                        Ok(()) => {}
                        Err(e) => tracing::error!(error = %e, "plugin reload failed; keeping the current plugins"),
                    }
                    files = watched_files(&host);
                    last = stamp(&files);
                }
            }
        })?;
    Ok(Watcher {
        stop,
        thread: Some(thread),
        sig_id,
    })
}
