//! The five capability sets of the container's process.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability as Cap};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapSets {
    pub bounding: HashSet<Cap>,
    pub effective: HashSet<Cap>,
    pub permitted: HashSet<Cap>,
    pub inheritable: HashSet<Cap>,
    pub ambient: HashSet<Cap>,
}

/// Converts the spec's names; capabilities this kernel library does not know
/// are skipped with a warning, as runc does, rather than failing old images.
fn convert(set: &Option<Capabilities>) -> HashSet<Cap> {
    set.iter()
        .flatten()
        .filter_map(|c| {
            let name = serde_json::to_value(c).ok()?.as_str()?.to_string();
            match Cap::from_str(&name) {
                Ok(cap) => Some(cap),
                Err(_) => {
                    tracing::warn!(capability = %name, "unknown capability ignored");
                    None
                }
            }
        })
        .collect()
}

impl CapSets {
    pub fn from_spec(c: &LinuxCapabilities) -> CapSets {
        CapSets {
            bounding: convert(c.bounding()),
            effective: convert(c.effective()),
            permitted: convert(c.permitted()),
            inheritable: convert(c.inheritable()),
            ambient: convert(c.ambient()),
        }
    }

    /// Capabilities the kernel supports that the bounding set must lose.
    pub fn bounding_drops(&self, supported: &HashSet<Cap>) -> Vec<Cap> {
        let mut drops: Vec<Cap> = supported.difference(&self.bounding).copied().collect();
        drops.sort_by_key(|c| c.index());
        drops
    }
}

fn caps_err(what: &str, e: caps::errors::CapsError) -> Error {
    Error::Io {
        context: format!("set {what} capabilities"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Shrinks the bounding set. Must run while the process still has
/// CAP_SETPCAP, i.e. before switching to the container's user.
pub fn apply_bounding(sets: &CapSets) -> Result<()> {
    let supported = caps::runtime::thread_all_supported();
    for cap in sets.bounding_drops(&supported) {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| caps_err("bounding", e))?;
    }
    Ok(())
}

fn mask(set: &HashSet<Cap>) -> u64 {
    set.iter().fold(0, |acc, c| acc | c.bitmask())
}

/// Sets the other four sets; runs after the user switch (with keepcaps).
pub fn apply_process_sets(sets: &CapSets) -> Result<()> {
    crate::sys::capset(mask(&sets.effective), mask(&sets.permitted), mask(&sets.inheritable)).map_err(|e| {
        Error::Io {
            context: "set the effective, permitted and inheritable capabilities (effective must be within permitted)".into(),
            source: e,
        }
    })?;
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("ambient", e))?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|e| caps_err("ambient", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder};

    #[test]
    fn spec_names_map_to_kernel_capabilities() {
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(
                [Capability::Chown, Capability::NetBindService]
                    .into_iter()
                    .collect::<Capabilities>(),
            )
            .effective([Capability::Chown].into_iter().collect::<Capabilities>())
            .build()
            .unwrap();
        let sets = CapSets::from_spec(&c);
        assert!(sets.bounding.contains(&Cap::CAP_CHOWN));
        assert!(sets.bounding.contains(&Cap::CAP_NET_BIND_SERVICE));
        assert_eq!(sets.effective.len(), 1);
        let supported: HashSet<Cap> = [
            Cap::CAP_CHOWN,
            Cap::CAP_SYS_ADMIN,
            Cap::CAP_NET_BIND_SERVICE,
        ]
        .into();
        assert_eq!(sets.bounding_drops(&supported), vec![Cap::CAP_SYS_ADMIN]);
    }
}
