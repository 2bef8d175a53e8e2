//! The example policy in every language gives the same verdict on the same
//! containers: the table below runs against each build of it.

mod plugins_common;

use husk_plugins::bindings::Edit;
use husk_plugins::{ContainerContext, Verdict};
use plugins_common::*;

/// Each language's build of the example policy.
const POLICIES: &[(&str, &str)] = &[
    ("rust", "rust-policy.wasm"),
    ("python", "python-policy.wasm"),
    ("c", "c-policy.wasm"),
    ("js", "js-policy.wasm"),
    ("wat", "wat-policy.wasm"),
    ("native", "native-policy.so"),
];

struct Case {
    name: &'static str,
    image: &'static str,
    edit: fn(&mut serde_json::Value),
    /// `None`: allowed with the policy's mutation; `Some(reason)`: denied.
    denied: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "plain busybox is mutated",
            image: "docker.io/library/busybox:1.36",
            edit: |_| {},
            denied: None,
        },
        Case {
            name: "short docker hub names count as docker.io",
            image: "busybox",
            edit: |_| {},
            denied: None,
        },
        Case {
            name: "CAP_SYS_ADMIN in bounding",
            image: "docker.io/library/busybox:1.36",
            edit: |v| add_cap(v, "bounding", "CAP_SYS_ADMIN"),
            denied: Some("privileged container: CAP_SYS_ADMIN"),
        },
        Case {
            name: "CAP_SYS_ADMIN in ambient only",
            image: "docker.io/library/busybox:1.36",
            edit: |v| {
                v["process"]["capabilities"]["ambient"] = serde_json::json!(["CAP_SYS_ADMIN"])
            },
            denied: Some("privileged container: CAP_SYS_ADMIN"),
        },
        Case {
            name: "secret-looking env name",
            image: "ghcr.io/acme/app:1",
            edit: |v| add_env(v, "DB_PASSWORD=hunter2"),
            denied: Some("environment variable DB_PASSWORD looks like a secret"),
        },
        Case {
            name: "lower-case token name",
            image: "ghcr.io/acme/app:1",
            edit: |v| add_env(v, "github_token=x"),
            denied: Some("environment variable github_token looks like a secret"),
        },
        Case {
            name: "AWS key value",
            image: "ghcr.io/acme/app:1",
            edit: |v| add_env(v, "AWS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
            denied: Some("environment variable AWS_KEY_ID looks like a secret"),
        },
        Case {
            name: "private key value",
            image: "ghcr.io/acme/app:1",
            edit: |v| add_env(v, "CERT=-----BEGIN PRIVATE KEY-----"),
            denied: Some("environment variable CERT looks like a secret"),
        },
        Case {
            name: "harmless env",
            image: "ghcr.io/acme/app:1",
            edit: |v| add_env(v, "LOG_LEVEL=debug"),
            denied: None,
        },
        Case {
            name: "registry outside the list",
            image: "quay.io/evil/miner:latest",
            edit: |_| {},
            denied: Some(
                "image quay.io/evil/miner:latest is not from an allowed registry (docker.io,ghcr.io)",
            ),
        },
        Case {
            name: "unknown image",
            image: "",
            edit: |_| {},
            denied: Some("image reference is unknown; allowed registries: docker.io,ghcr.io"),
        },
        Case {
            name: "privilege is checked before secrets",
            image: "quay.io/x/y",
            edit: |v| {
                add_cap(v, "effective", "CAP_SYS_ADMIN");
                add_env(v, "API_TOKEN=1");
            },
            denied: Some("privileged container: CAP_SYS_ADMIN"),
        },
    ]
}

fn run_language(lang: &str, file: &str) {
    let mut cfg = plugin(&format!("policy-{lang}"), file);
    cfg.config
        .insert("allowed-registries".into(), "docker.io,ghcr.io".into());
    let host = host(vec![cfg]);
    let mut failures = Vec::new();
    for case in cases() {
        let spec = spec(case.edit);
        let ctx = ContainerContext {
            image_ref: case.image.into(),
            ..Default::default()
        };
        let d = host.on_create_spec("c1", &spec, &ctx);
        let got = d.denial().map(|d| d.reason.clone());
        if got.as_deref() != case.denied {
            failures.push(format!(
                "{}: expected {:?}, got {:?} ({:?})",
                case.name, case.denied, got, d.reports
            ));
            continue;
        }
        if case.denied.is_none() {
            let expected = vec![
                Edit::DropCapability("CAP_NET_RAW".into()),
                Edit::AddAnnotation(husk_plugins::KeyValue {
                    key: "io.husk.policy".into(),
                    value: "checked".into(),
                }),
            ];
            match d.verdict() {
                Verdict::Mutate(edits) if edits == expected => {}
                other => failures.push(format!(
                    "{}: expected the mutation, got {other:?}",
                    case.name
                )),
            }
            // The mutation really reached the spec.
            let spec = d.spec.expect("an allowed container has a spec");
            let caps = spec
                .process()
                .as_ref()
                .unwrap()
                .capabilities()
                .as_ref()
                .unwrap();
            let has_raw = caps
                .bounding()
                .iter()
                .flatten()
                .any(|c| serde_json::to_value(c).unwrap() == "CAP_NET_RAW");
            if has_raw {
                failures.push(format!("{}: CAP_NET_RAW still in bounding", case.name));
            }
            if spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get("io.husk.policy"))
                .map(String::as_str)
                != Some("checked")
            {
                failures.push(format!("{}: annotation missing", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{lang} policy:\n{}",
        failures.join("\n")
    );
}

#[test]
fn policy_rust() {
    run_language("rust", POLICIES[0].1);
}

#[test]
fn policy_python() {
    run_language("python", POLICIES[1].1);
}

#[test]
fn policy_c() {
    run_language("c", POLICIES[2].1);
}

#[test]
fn policy_js() {
    run_language("js", POLICIES[3].1);
}

#[test]
fn policy_wat() {
    run_language("wat", POLICIES[4].1);
}

#[test]
fn policy_native() {
    run_language("native", POLICIES[5].1);
}
