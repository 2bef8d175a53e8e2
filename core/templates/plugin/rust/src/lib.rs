//! A husk policy plugin. husk calls `on_create` before it creates each
//! container; it answers allow, deny(reason) or mutate(edits). The types are
//! generated from `wit/` (`husk:plugin@0.1.0`); see husk's
//! docs/plugin-guide.md.
//!
//! Each call runs in a fresh instance: globals do not survive between calls.

wit_bindgen::generate!({ path: "wit", world: "policy" });

use exports::husk::plugin::policy_hooks::Guest;
use husk::plugin::config;
use husk::plugin::types::{ContainerView, Edit, KeyValue, Verdict};

struct Policy;

impl Guest for Policy {
    fn on_create(container: ContainerView) -> Verdict {
        // Deny: with `deny-env = "NAME"` in the plugin's config, a container
        // that sets NAME is refused. Put your own checks here (capabilities,
        // mounts, image, user...: see `ContainerView`).
        if let Some(name) = config::get("deny-env") {
            if container.env.iter().any(|e| e.name == name) {
                return Verdict::Deny(format!("environment variable {name} is not allowed"));
            }
        }
        // Mutate: with `add-annotation = "KEY=VALUE"`, the container gets that
        // annotation. Other edits: SetEnv, DropCapability, AddMount,
        // SetReadonlyRootfs, SetResource.
        if let Some(kv) = config::get("add-annotation") {
            let (key, value) = kv.split_once('=').unwrap_or((&kv, ""));
            return Verdict::Mutate(vec![Edit::AddAnnotation(KeyValue {
                key: key.into(),
                value: value.into(),
            })]);
        }
        Verdict::Allow
    }
}

export!(Policy);
