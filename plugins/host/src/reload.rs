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

/// The stamps to keep for `files` after a (re)load that began once
/// `before` (files and their stamps) was taken: a file's stamp from before
/// the load, so that a change written while the load read the files (a
/// `husk plugin install` racing a request) shows at the next check and
/// reloads again; a file the new config names for the first time is
/// stamped now. Stamping everything after the load instead would record
/// the new file for the old plugins, and the change would never load.
pub(crate) fn stamp_after_load(files: &[PathBuf], before: (&[PathBuf], &Stamp)) -> Stamp {
    files
        .iter()
        .map(|f| match before.0.iter().position(|b| b == f) {
            Some(i) => before.1.get(i).copied().flatten(),
            None => crate::protocol::stamp(f),
        })
        .collect()
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
                    let before = stamp(&files);
                    match host.reload() {
                        Ok(()) => {}
                        Err(e) => tracing::error!(error = %e, "plugin reload failed; keeping the current plugins"),
                    }
                    let reloaded = watched_files(&host);
                    last = stamp_after_load(&reloaded, (&files, &before));
                    files = reloaded;
                }
            }
        })?;
    Ok(Watcher {
        stop,
        thread: Some(thread),
        sig_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config rewritten while a load read it: the stamps kept are the
    /// ones from before the load, so the next check sees the change.
    #[test]
    fn a_change_during_a_load_is_seen_by_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("plugins.toml");
        let plugin = dir.path().join("p.wasm");
        std::fs::write(&config, "on_error = \"deny\"\n").unwrap();
        std::fs::write(&plugin, "wasm").unwrap();
        let before_files = vec![config.clone()];
        let before = stamp(&before_files);
        // The load reads the config; `husk plugin install` rewrites it.
        std::fs::write(&config, "on_error = \"allow\"\n").unwrap();
        let loaded = vec![config.clone(), plugin.clone()];
        let kept = stamp_after_load(&loaded, (&before_files, &before));
        assert_eq!(
            kept[0], before[0],
            "the config keeps its stamp from before the load"
        );
        assert_eq!(
            kept[1],
            crate::protocol::stamp(&plugin),
            "a new file is stamped now"
        );
        assert_ne!(stamp(&loaded), kept, "the next check reloads");
    }
}
