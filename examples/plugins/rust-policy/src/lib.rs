//! The example policy, in Rust. Identical in behaviour to the Python, C,
//! JavaScript and WAT versions (see examples/plugins/README.md):
//!
//! 1. deny a privileged container: CAP_SYS_ADMIN in any capability set;
//! 2. deny an environment variable that looks like a secret: its name
//!    contains SECRET, TOKEN or PASSWORD (any case), or its value starts with
//!    AKIA, ghp_ or glpat-, or contains -----BEGIN;
//! 3. deny an image outside the config's `allowed-registries` (comma
//!    separated; unset or empty allows any);
//! 4. otherwise mutate: drop CAP_NET_RAW, add annotation io.husk.policy=checked.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy",
});

use exports::husk::plugin::policy_hooks::Guest;
use husk::plugin::config;
use husk::plugin::types::{ContainerView, Edit, KeyValue, Verdict};

struct Policy;

const SECRET_NAMES: [&str; 3] = ["SECRET", "TOKEN", "PASSWORD"];
const SECRET_PREFIXES: [&str; 3] = ["AKIA", "ghp_", "glpat-"];

/// The registry of an image reference: its first component if that looks
/// like a host (has a `.` or `:`, or is `localhost`), else docker.io.
fn registry(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

fn decide(c: &ContainerView) -> Verdict {
    if let Some(caps) = &c.capabilities {
        let sets = [
            &caps.bounding,
            &caps.effective,
            &caps.permitted,
            &caps.inheritable,
            &caps.ambient,
        ];
        if sets
            .iter()
            .any(|s| s.iter().any(|cap| cap == "CAP_SYS_ADMIN"))
        {
            return Verdict::Deny("privileged container: CAP_SYS_ADMIN".into());
        }
    }
    for e in &c.env {
        let upper = e.name.to_ascii_uppercase();
        if SECRET_NAMES.iter().any(|s| upper.contains(s))
            || SECRET_PREFIXES.iter().any(|p| e.value.starts_with(p))
            || e.value.contains("-----BEGIN")
        {
            return Verdict::Deny(format!(
                "environment variable {} looks like a secret",
                e.name
            ));
        }
    }
    let allowed = config::get("allowed-registries").unwrap_or_default();
    let list: Vec<&str> = allowed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !list.is_empty() {
        if c.image.reference.is_empty() {
            return Verdict::Deny(format!(
                "image reference is unknown; allowed registries: {allowed}"
            ));
        }
        if !list.contains(&registry(&c.image.reference)) {
            return Verdict::Deny(format!(
                "image {} is not from an allowed registry ({allowed})",
                c.image.reference
            ));
        }
    }
    Verdict::Mutate(vec![
        Edit::DropCapability("CAP_NET_RAW".into()),
        Edit::AddAnnotation(KeyValue {
            key: "io.husk.policy".into(),
            value: "checked".into(),
        }),
    ])
}

impl Guest for Policy {
    fn on_create(container: ContainerView) -> Verdict {
        decide(&container)
    }
}

export!(Policy);
