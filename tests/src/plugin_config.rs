//! Plugin configs for end-to-end tests: the example plugins that
//! `scripts/build-plugins.sh` builds, written into a `plugins.toml` the way
//! an operator would.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::runtime_bin::profile_dir_of;

/// `examples/plugins/build/<file>`, or `$HUSK_PLUGINS_OUT/<file>`.
pub fn plugin_file(file: &str) -> PathBuf {
    let dir = std::env::var_os("HUSK_PLUGINS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/build")
        });
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: build the example plugins with scripts/build-plugins.sh \
         (after scripts/install-deps.sh)",
        path.display()
    );
    path
}

/// The compile cache every end-to-end test shares (`target/<profile>/husk-plugin-cache`),
/// so each component is compiled once per checkout.
pub fn shared_cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    profile_dir_of(&exe).join("husk-plugin-cache")
}

/// A `plugins.toml` under construction.
#[derive(Debug, Clone)]
pub struct PluginsToml {
    text: String,
}

impl PluginsToml {
    /// Compiled code in the shared cache; stores persisted in `state_dir`.
    pub fn new(state_dir: &Path) -> PluginsToml {
        PluginsToml {
            text: format!(
                "cache-dir = {:?}\nstate-dir = {:?}\n",
                shared_cache_dir().display().to_string(),
                state_dir.display().to_string()
            ),
        }
    }

    /// A `[[plugin]]` for the example plugin `file`, with `extra` TOML lines
    /// (`mode = "audit"`, `grants = ["store"]`, a `[plugin.config]` table...).
    pub fn plugin(mut self, name: &str, file: &str, extra: &str) -> PluginsToml {
        let _ = write!(
            self.text,
            "\n[[plugin]]\nname = {name:?}\npath = {:?}\n{extra}\n",
            plugin_file(file).display().to_string()
        );
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Writes it to `path` (atomically, so a watcher never sees half of it).
    pub fn write(&self, path: &Path) -> PathBuf {
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, &self.text).expect("writing the plugin config");
        std::fs::rename(&tmp, path).expect("renaming the plugin config into place");
        path.to_owned()
    }
}

/// The example policy's config table allowing only `registries`.
pub fn allowed_registries(registries: &str) -> String {
    format!("[plugin.config]\nallowed-registries = {registries:?}")
}

/// CAP_NET_RAW's bit in /proc/PID/status's capability masks: the example
/// policy's edit drops it.
pub const CAP_NET_RAW_BIT: u64 = 1 << 13;

/// The capability mask `field` (`CapBnd:`, `CapEff:`...) of a
/// /proc/PID/status text; `None` when it is not there.
pub fn capability_mask(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}
