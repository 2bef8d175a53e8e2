//! The plugin host's promises: limits and on-error policies, fresh instances,
//! no ambient authority, audit mode, ordering, the lifecycle store.

mod plugins_common;

use std::io::Write;
use std::time::Instant;

use husk_plugins::config::{Mode, OnError};
use husk_plugins::{ContainerContext, HookFailure, Outcome};
use plugins_common::*;

fn ctx() -> ContainerContext {
    ContainerContext {
        image_ref: "docker.io/library/busybox:1.36".into(),
        ..Default::default()
    }
}

fn only_outcome(d: &husk_plugins::Decision) -> &Outcome {
    assert_eq!(d.reports.len(), 1, "{:?}", d.reports);
    &d.reports[0].outcome
}

#[test]
fn an_infinite_loop_is_stopped_at_its_time_limit_and_denied() {
    let mut p = plugin("loop", "wat-loop.wasm");
    p.time_limit = ms(50);
    let host = host(vec![p]);
    let started = Instant::now();
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    let took = started.elapsed();
    assert!(
        matches!(only_outcome(&d), Outcome::FailedClosed(HookFailure::Timeout(t)) if *t == ms(50)),
        "{:?}",
        d.reports
    );
    let denial = d.denial().expect("on-error deny denies");
    assert_eq!(denial.plugin, "loop");
    assert!(denial.reason.contains("timed out"), "{}", denial.reason);
    assert!(d.spec.is_none());
    assert!(took >= ms(45) && took < ms(1000), "took {took:?}");
}

#[test]
fn a_timeout_with_on_error_allow_lets_the_container_through() {
    let mut p = plugin("loop", "wat-loop.wasm");
    p.time_limit = ms(20);
    p.on_error = OnError::Allow;
    let host = host(vec![p]);
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    assert!(d.is_allowed());
    assert!(matches!(
        only_outcome(&d),
        Outcome::FailedOpen(HookFailure::Timeout(_))
    ));
    assert!(d.spec.is_some());
}

#[test]
fn the_default_time_limit_is_100_ms() {
    let host = host(vec![plugin("loop", "wat-loop.wasm")]);
    let started = Instant::now();
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    let took = started.elapsed();
    assert!(matches!(
        only_outcome(&d),
        Outcome::FailedClosed(HookFailure::Timeout(t)) if *t == ms(100)
    ));
    assert!(took >= ms(95) && took < ms(1000), "took {took:?}");
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let mut p = plugin("bomb", "wat-membomb.wasm");
    p.memory_limit_mib = 16;
    let host = host(vec![p]);
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    assert!(
        matches!(
            only_outcome(&d),
            Outcome::FailedClosed(HookFailure::MemoryCap { cap_mib: 16 })
        ),
        "{:?}",
        d.reports
    );
    assert!(d.denial().unwrap().reason.contains("memory cap"));

    // Fail open the same way.
    let mut p = plugin("bomb", "wat-membomb.wasm");
    p.memory_limit_mib = 16;
    p.on_error = OnError::Allow;
    let d = host_allow(p);
    assert!(d.is_allowed());
}

fn host_allow(p: husk_plugins::PluginConfig) -> husk_plugins::Decision {
    host(vec![p]).on_create_spec("c1", &spec(|_| {}), &ctx())
}

#[test]
fn a_trap_is_a_failure_resolved_by_on_error() {
    let d = host(vec![plugin("trap", "wat-trap.wasm")]).on_create_spec("c1", &spec(|_| {}), &ctx());
    match only_outcome(&d) {
        Outcome::FailedClosed(HookFailure::Trap(msg)) => {
            assert!(msg.contains("unreachable"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    let mut p = plugin("trap", "wat-trap.wasm");
    p.on_error = OnError::Allow;
    assert!(host_allow(p).is_allowed());
}

#[test]
fn an_invalid_mutation_is_a_failure_and_nothing_of_it_is_applied() {
    let d = host(vec![plugin("bad", "wat-invalid-mutation.wasm")]).on_create_spec(
        "c1",
        &spec(|_| {}),
        &ctx(),
    );
    match only_outcome(&d) {
        Outcome::FailedClosed(HookFailure::InvalidMutation(msg)) => {
            assert!(msg.contains("BAD=NAME"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    let mut p = plugin("bad", "wat-invalid-mutation.wasm");
    p.on_error = OnError::Allow;
    let d = host_allow(p);
    assert!(d.is_allowed());
    assert!(d.edits.is_empty());
    let env = d
        .spec
        .unwrap()
        .process()
        .clone()
        .unwrap()
        .env()
        .clone()
        .unwrap();
    assert!(!env.iter().any(|e| e.starts_with("BAD")), "{env:?}");
}

#[test]
fn every_call_gets_a_fresh_instance() {
    // The plugin counts calls in a global and denies if it sees more than 1.
    let host = std::sync::Arc::new(host(vec![plugin("counter", "wat-counter.wasm")]));
    for _ in 0..20 {
        let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
        assert!(d.is_allowed(), "{:?}", d.reports);
    }
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let d = host.on_create_spec(&format!("c{i}"), &spec(|_| {}), &ctx());
                    assert!(d.is_allowed(), "{:?}", d.reports);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Stores kept past their calls (as the plugin service keeps them until
    // its reply is sent) are never used again: each call is still fresh,
    // and kept until the caller drops them; nested keeping gives each
    // caller its own.
    let (decisions, spent) = husk_plugins::wasm::keeping_stores(|| {
        let d1 = host.on_create_spec("k1", &spec(|_| {}), &ctx());
        let (d2, inner) =
            husk_plugins::wasm::keeping_stores(|| host.on_create_spec("k2", &spec(|_| {}), &ctx()));
        assert_eq!(inner.len(), 1);
        let d3 = host.on_create_spec("k3", &spec(|_| {}), &ctx());
        [d1, d2, d3]
    });
    for d in &decisions {
        assert!(d.is_allowed(), "{:?}", d.reports);
    }
    assert_eq!(spent.len(), 2);
    drop(spent);
    let (d, spent) =
        husk_plugins::wasm::keeping_stores(|| host.on_create_spec("k4", &spec(|_| {}), &ctx()));
    assert!(d.is_allowed(), "{:?}", d.reports);
    assert_eq!(spent.len(), 1);
    // Outside, nothing is kept.
    assert!(husk_plugins::wasm::keeping_stores(|| ()).1.is_empty());
}

#[test]
fn a_call_that_dirties_many_scattered_pages_leaves_none_to_the_next() {
    // The plugin writes 160 pages one page apart (more disjoint dirty
    // regions than the slot reset's scan holds at once, so the reset must
    // go on past them) and denies if it ever finds one not as the memory
    // image has it. The slot is reused: the same plugin, one call at a time.
    let host = host(vec![plugin("scatter", "wat-scatter.wasm")]);
    for i in 0..30 {
        let d = host.on_create_spec(&format!("c{i}"), &spec(|_| {}), &ctx());
        assert!(d.is_allowed(), "call {i}: {:?}", d.reports);
    }
}

/// A file the probe tries to read, and a listening socket it tries to reach.
struct Targets {
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    listener: std::net::TcpListener,
}

fn targets() -> Targets {
    let dir = tempfile::Builder::new()
        .prefix("husk-plugin-test")
        .tempdir()
        .unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(b"the host's secret")
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Targets {
        dir,
        file,
        listener,
    }
}

fn probe(t: &Targets, grants: &[&str]) -> String {
    let mut p = plugin("probe", "rust-probe.wasm");
    p.config
        .insert("file".into(), t.file.to_string_lossy().into_owned());
    p.config
        .insert("addr".into(), t.listener.local_addr().unwrap().to_string());
    p.grants = husk_plugins::grants::Grants::parse(
        "probe",
        &grants.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
    )
    .unwrap();
    // The probe reports through its deny reason.
    let d = host(vec![p]).on_create_spec("c1", &spec(|_| {}), &ctx());
    d.denial()
        .unwrap_or_else(|| panic!("{:?}", d.reports))
        .reason
        .clone()
}

#[test]
fn a_plugin_without_grants_has_no_files_network_or_clock() {
    let t = targets();
    let report = probe(&t, &[]);
    assert!(report.contains("file=err:"), "{report}");
    assert!(!report.contains("the host's secret"), "{report}");
    assert!(report.contains("net=err:"), "{report}");
    assert!(report.ends_with("clock=0"), "{report}");
}

#[test]
fn grants_give_exactly_what_they_name() {
    let t = targets();
    let fs = format!("fs:{}:ro", t.dir.path().display());
    let report = probe(&t, &[&fs, "network", "clock"]);
    assert!(report.contains("file=ok:the host's secret"), "{report}");
    assert!(report.contains("net=ok"), "{report}");
    assert!(!report.ends_with("clock=0"), "{report}");

    // Only the file: still no network.
    let report = probe(&t, &[&fs]);
    assert!(report.contains("file=ok:"), "{report}");
    assert!(report.contains("net=err:"), "{report}");
}

#[test]
fn audit_mode_reports_a_would_deny_but_does_not_enforce_it() {
    let mut p = plugin("policy", "rust-policy.wasm");
    p.mode = Mode::Audit;
    let host = host(vec![p]);
    let privileged = spec(|v| add_cap(v, "bounding", "CAP_SYS_ADMIN"));
    let d = host.on_create_spec("c1", &privileged, &ctx());
    assert!(d.is_allowed(), "{:?}", d.reports);
    assert_eq!(
        d.audit_denials(),
        vec![("policy", "privileged container: CAP_SYS_ADMIN")]
    );
    // Would-mutate is reported, not applied.
    let d = host.on_create_spec("c2", &spec(|_| {}), &ctx());
    assert!(matches!(only_outcome(&d), Outcome::WouldMutate(e) if e.len() == 2));
    assert!(d.edits.is_empty());
    assert_eq!(d.spec.unwrap(), spec(|_| {}));
}

#[test]
fn plugins_run_in_order_and_the_first_deny_stops_the_chain() {
    let mut allow = plugin("allow", "wat-allow.wasm");
    allow.order = 1;
    let mut policy = plugin("policy", "rust-policy.wasm");
    policy.order = 2;
    let mut trap = plugin("trap", "wat-trap.wasm");
    trap.order = 3;
    // Given out of order: the host sorts by `order`.
    let host = host(vec![trap, policy, allow]);
    let names = |d: &husk_plugins::Decision| {
        d.reports
            .iter()
            .map(|r| r.plugin.clone())
            .collect::<Vec<_>>()
    };

    let d = host.on_create_spec(
        "c1",
        &spec(|v| add_cap(v, "effective", "CAP_SYS_ADMIN")),
        &ctx(),
    );
    assert_eq!(
        names(&d),
        ["allow", "policy"],
        "trap must not run after a deny"
    );
    assert_eq!(d.denial().unwrap().plugin, "policy");

    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    assert_eq!(names(&d), ["allow", "policy", "trap"]);
    assert_eq!(d.denial().unwrap().plugin, "trap");
}

#[test]
fn later_plugins_see_earlier_mutations() {
    let mut first = plugin("first", "rust-policy.wasm");
    first.order = 1;
    let mut second = plugin("second", "native-policy.so");
    second.order = 2;
    let host = host(vec![first, second]);
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    assert!(d.is_allowed(), "{:?}", d.reports);
    assert_eq!(d.edits.len(), 4);
    let view = d.view();
    let caps = view.capabilities.as_ref().unwrap();
    assert!(!caps.bounding.contains(&"CAP_NET_RAW".to_string()));
    assert!(view
        .annotations
        .iter()
        .any(|a| a.key == "io.husk.policy" && a.value == "checked"));
}

#[test]
fn a_lifecycle_plugin_keeps_state_in_its_granted_store() {
    use husk_plugins::{ExitEvent, ExitStatus, StartEvent, Timestamp};
    let mut p = plugin("recorder", "rust-lifecycle.wasm");
    p.grants.store = true;
    let host = host(vec![p]);
    let at = |s| Timestamp {
        seconds: s,
        nanoseconds: 0,
    };
    for (i, id) in ["a", "b"].iter().enumerate() {
        let r = host.on_start(&StartEvent {
            id: id.to_string(),
            pid: 100 + i as u32,
            started_at: at(10),
            annotations: vec![],
        });
        assert!(matches!(r[0].outcome, Outcome::Ran), "{r:?}");
        host.on_exit(&ExitEvent {
            id: id.to_string(),
            pid: 100 + i as u32,
            status: ExitStatus::Signal(9),
            oom_killed: true,
            started_at: at(10),
            exited_at: at(12),
            duration_ms: 2000,
            annotations: vec![],
        });
    }
    let store = host.store("recorder");
    let n = |k: &str| i64::from_le_bytes(store.get(k).unwrap().try_into().unwrap());
    assert_eq!(n("starts"), 2);
    assert_eq!(n("exits"), 2);
    assert_eq!(store.get("start/b").unwrap(), b"101");
    assert_eq!(store.get("exit/a").unwrap(), b"signal:9,oom,2000ms");
    // A policy-only host has no create hook from it.
    let d = host.on_create_spec("c1", &spec(|_| {}), &ctx());
    assert!(d.reports.is_empty());
}

#[test]
fn a_store_import_without_the_grant_is_refused_at_load() {
    let err = husk_plugins::PluginHost::new(husk_plugins::HostConfig::with_plugins(
        cache_dir(),
        vec![plugin("recorder", "rust-lifecycle.wasm")],
    ))
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("husk:plugin/store@0.1.0") && msg.contains("grants = [\"store\"]"),
        "{msg}"
    );
}

/// The plugin service's path: the spec as text, parsed once. The edited
/// JSON comes back only when edits changed the spec, and is the typed
/// spec's; the final annotations and view include the last plugin's edits
/// (which no later plugin saw).
#[test]
fn a_spec_given_as_json_comes_back_only_when_edits_changed_it() {
    let text = serde_json::to_vec_pretty(&spec(|_| {})).unwrap();
    let policy = host(vec![plugin("policy", "rust-policy.wasm")]);
    let d = policy.on_create_json("c1", &text, &ctx()).unwrap();
    assert!(d.is_allowed(), "{:?}", d.reports);
    let edited = d
        .edited_json
        .as_ref()
        .expect("the policy's edits changed the spec");
    let typed = d.spec.as_ref().expect("the edited spec, typed");
    // (Capability sets are sets: compared typed, not as JSON lists.)
    let reparsed: oci_spec::runtime::Spec = serde_json::from_value(edited.clone()).unwrap();
    assert_eq!(&reparsed, typed);
    let caps = &edited["process"]["capabilities"]["bounding"];
    assert!(
        !caps.as_array().unwrap().iter().any(|c| c == "CAP_NET_RAW"),
        "{caps}"
    );
    assert!(d
        .annotations()
        .iter()
        .any(|(k, v)| k == "io.husk.policy" && v == "checked"));
    let view = d.view();
    assert!(!view
        .capabilities
        .unwrap()
        .bounding
        .contains(&"CAP_NET_RAW".to_string()));
    assert!(view.annotations.iter().any(|a| a.key == "io.husk.policy"));
    // As text: serialized now (no plugin saw the last edits), or, with a
    // second plugin that saw them, the view's own `spec-json`.
    assert_eq!(d.edited_text().unwrap(), edited.to_string());
    let two = host(vec![
        plugin("policy", "rust-policy.wasm"),
        plugin("again", "wat-policy.wasm"),
    ]);
    let d = two.on_create_json("c1", &text, &ctx()).unwrap();
    let edited = d.edited_json.as_ref().expect("edited");
    assert_eq!(d.edited_text().unwrap(), edited.to_string());
    assert_eq!(d.edited_text().unwrap(), d.view().spec_json);

    // Edits that change nothing (the policy's, on a spec that has them
    // already): nothing to send back either.
    let already = serde_json::to_vec(&spec(|v| {
        with_the_policys_edits(v);
    }))
    .unwrap();
    let d = policy.on_create_json("c1", &already, &ctx()).unwrap();
    assert!(d.is_allowed() && !d.edits.is_empty(), "{:?}", d.reports);
    assert!(d.edited_json.is_none(), "{:?}", d.edited_json);

    // Allowed without edits: nothing to send back.
    let allow = host(vec![plugin("allow", "wat-allow.wasm")]);
    let with_annotation = serde_json::to_vec(&spec(|v| {
        v["annotations"] = serde_json::json!({"b": "2", "a": "1"});
    }))
    .unwrap();
    let d = allow
        .on_create_json("c1", &with_annotation, &ctx())
        .unwrap();
    assert!(d.is_allowed() && d.edits.is_empty(), "{:?}", d.reports);
    assert!(d.edited_json.is_none() && d.spec.is_none());
    assert_eq!(
        d.annotations(),
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string())
        ]
    );

    // Not a spec: the reason names where.
    let e = allow
        .on_create_json(
            "c1",
            br#"{"ociVersion": "1.0.2", "process": {"cwd": 7}}"#,
            &ctx(),
        )
        .unwrap_err();
    assert!(e.contains("process.cwd"), "{e}");
    assert!(allow.on_create_json("c1", b"{", &ctx()).is_err());
}

/// Edits that change nothing skip the re-validation only when the spec
/// they leave was validated already (by an earlier plugin's edits): on the
/// spec as sent, which nothing validated yet, they are checked like any.
#[test]
fn edits_that_change_nothing_are_still_validated_on_the_spec_as_sent() {
    let invalid_but_edited_already = spec(|v| {
        with_the_policys_edits(v);
        v["process"]["args"] = serde_json::json!([]);
    });
    let d = host(vec![plugin("policy", "rust-policy.wasm")]).on_create_spec(
        "c1",
        &invalid_but_edited_already,
        &ctx(),
    );
    match only_outcome(&d) {
        Outcome::FailedClosed(HookFailure::InvalidMutation(m)) => {
            assert!(m.contains("process.args is empty"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(d.denial().is_some());
}

/// What the example policy's edits leave in a spec: no CAP_NET_RAW in any
/// capability set, and its annotation.
fn with_the_policys_edits(v: &mut serde_json::Value) {
    for set in v["process"]["capabilities"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        set.as_array_mut().unwrap().retain(|c| c != "CAP_NET_RAW");
    }
    v["annotations"] = serde_json::json!({"io.husk.policy": "checked"});
}
