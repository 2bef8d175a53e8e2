//! Applying a policy's edits to the OCI spec, then validating the result.
//!
//! Edits are applied to the spec's JSON form (the OCI document itself), in
//! order; the result is parsed back into an `oci_spec::runtime::Spec` (which
//! checks every type) and given to `husk_runtime::spec::validate` (which
//! checks what the runtime would otherwise discover half-way through
//! create). Any failure makes the whole list an invalid mutation: nothing of
//! it is applied.

use oci_spec::runtime::Spec;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bindings::{Edit, ResourceLimit};

/// Why a list of edits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("edit {index} ({edit}): {reason}")]
pub struct InvalidMutation {
    pub index: usize,
    pub edit: String,
    pub reason: String,
}

/// A short name of an edit, for messages.
pub fn describe(edit: &Edit) -> String {
    match edit {
        Edit::SetEnv(e) => format!("set-env {}", e.name),
        Edit::DropCapability(c) => format!("drop-capability {c}"),
        Edit::AddMount(m) => format!("add-mount {}", m.destination),
        Edit::SetReadonlyRootfs(b) => format!("set-readonly-rootfs {b}"),
        Edit::SetResource(r) => format!("set-resource {r:?}"),
        Edit::AddAnnotation(kv) => format!("add-annotation {}", kv.key),
    }
}

/// Applies `edits` to `spec` and validates the result.
pub fn apply(spec: &Spec, edits: &[Edit]) -> Result<Spec, InvalidMutation> {
    let value = serde_json::to_value(spec).map_err(|e| InvalidMutation {
        index: 0,
        edit: "-".into(),
        reason: format!("the spec cannot be serialized: {e}"),
    })?;
    let (_, spec) = apply_value(value, edits)?;
    Ok(spec)
}

/// Applies `edits` to the spec's JSON and validates; returns both forms.
pub fn apply_value(value: Value, edits: &[Edit]) -> Result<(Value, Spec), InvalidMutation> {
    let value = apply_edits(value, edits)?;
    let spec = check(&value, edits)?;
    Ok((value, spec))
}

/// Applies `edits` to the spec's JSON, each checked on its own (a name, a
/// path, a value), without validating the whole result: see [`check`].
pub fn apply_edits(mut value: Value, edits: &[Edit]) -> Result<Value, InvalidMutation> {
    for (index, edit) in edits.iter().enumerate() {
        apply_one(&mut value, edit).map_err(|reason| InvalidMutation {
            index,
            edit: describe(edit),
            reason,
        })?;
    }
    Ok(value)
}

/// Validates a spec's JSON after `edits`: parsed as an OCI spec, then
/// `husk_runtime::spec::validate`.
pub fn check(value: &Value, edits: &[Edit]) -> Result<Spec, InvalidMutation> {
    let whole = |reason: String| InvalidMutation {
        index: edits.len().saturating_sub(1),
        edit: "the edited spec".into(),
        reason,
    };
    // From the value in place: no copy of it to consume.
    let spec =
        Spec::deserialize(value).map_err(|e| whole(format!("is not a valid OCI spec: {e}")))?;
    husk_runtime::spec::validate(&spec).map_err(|e| whole(format!("fails validation: {e}")))?;
    Ok(spec)
}

fn obj<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, String> {
    let Value::Object(map) = v else {
        return Err("the spec is not a JSON object where expected".into());
    };
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if entry.is_null() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` in the spec is not an object"))
}

fn arr<'a>(map: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let entry = map.entry(key).or_insert_with(|| json!([]));
    if entry.is_null() {
        *entry = json!([]);
    }
    entry
        .as_array_mut()
        .ok_or_else(|| format!("`{key}` in the spec is not a list"))
}

fn apply_one(spec: &mut Value, edit: &Edit) -> Result<(), String> {
    match edit {
        Edit::SetEnv(e) => {
            if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                return Err(format!(
                    "{:?} is not a valid variable name (non-empty, no `=`)",
                    e.name
                ));
            }
            if e.value.contains('\0') {
                return Err("the value contains a NUL byte".into());
            }
            let process = obj(spec, "process")?;
            let env = arr(process, "env")?;
            let prefix = format!("{}=", e.name);
            let entry = Value::String(format!("{}={}", e.name, e.value));
            match env
                .iter_mut()
                .find(|v| v.as_str().is_some_and(|s| s.starts_with(&prefix)))
            {
                Some(slot) => *slot = entry,
                None => env.push(entry),
            }
        }
        Edit::DropCapability(name) => {
            // oci-spec also parses `NET_RAW`; the spec's lists hold `CAP_` names,
            // so a drop without the prefix would silently remove nothing.
            if !name.starts_with("CAP_")
                || serde_json::from_value::<oci_spec::runtime::Capability>(Value::String(
                    name.clone(),
                ))
                .is_err()
            {
                return Err(format!(
                    "{name:?} is not a Linux capability (spell it like CAP_NET_RAW)"
                ));
            }
            let process = obj(spec, "process")?;
            if let Some(Value::Object(caps)) = process.get_mut("capabilities") {
                for set in caps.values_mut() {
                    if let Value::Array(list) = set {
                        list.retain(|c| c.as_str() != Some(name));
                    }
                }
            }
        }
        Edit::AddMount(m) => {
            if !m.destination.starts_with('/') {
                return Err(format!("destination {:?} must be absolute", m.destination));
            }
            if m.kind.is_empty() {
                return Err("the mount kind (OCI `type`) is empty; use bind, tmpfs, ...".into());
            }
            let Value::Object(root) = spec else {
                return Err("the spec is not a JSON object".into());
            };
            let mounts = arr(root, "mounts")?;
            let dest = m.destination.trim_end_matches('/');
            if mounts.iter().any(|x| {
                x["destination"]
                    .as_str()
                    .is_some_and(|d| d.trim_end_matches('/') == dest)
            }) {
                return Err(format!("{} is already a mount destination", m.destination));
            }
            mounts.push(json!({
                "destination": m.destination,
                "type": m.kind,
                "source": m.source,
                "options": m.options,
            }));
        }
        Edit::SetReadonlyRootfs(ro) => {
            let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) else {
                return Err("the spec has no root filesystem".into());
            };
            root.insert("readonly".into(), Value::Bool(*ro));
        }
        Edit::SetResource(limit) => {
            let linux = obj(spec, "linux")?;
            let resources = obj_in(linux, "resources")?;
            let (group, key, value) = match *limit {
                ResourceLimit::MemoryBytes(v) if v > 0 => ("memory", "limit", json!(v)),
                ResourceLimit::MemorySwapBytes(v) if v > 0 || v == -1 => {
                    ("memory", "swap", json!(v))
                }
                ResourceLimit::CpuShares(v) if (2..=262_144).contains(&v) => {
                    ("cpu", "shares", json!(v))
                }
                ResourceLimit::CpuQuota(v) if v > 0 || v == -1 => ("cpu", "quota", json!(v)),
                ResourceLimit::CpuPeriod(v) if (1000..=1_000_000).contains(&v) => {
                    ("cpu", "period", json!(v))
                }
                ResourceLimit::Pids(v) if v > 0 || v == -1 => ("pids", "limit", json!(v)),
                other => return Err(format!("{other:?} is out of range")),
            };
            let g = obj_in(resources, group)?;
            g.insert(key.into(), value);
            if group == "memory" {
                let limit = g.get("limit").and_then(Value::as_i64);
                let swap = g.get("swap").and_then(Value::as_i64);
                if let (Some(l), Some(s)) = (limit, swap) {
                    if s != -1 && s < l {
                        return Err(format!(
                            "memory swap limit {s} is below the memory limit {l}"
                        ));
                    }
                }
            }
        }
        Edit::AddAnnotation(kv) => {
            if kv.key.is_empty() {
                return Err("the annotation key is empty".into());
            }
            let Value::Object(root) = spec else {
                return Err("the spec is not a JSON object".into());
            };
            obj_in(root, "annotations")?.insert(kv.key.clone(), Value::String(kv.value.clone()));
        }
    }
    Ok(())
}

fn obj_in<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if entry.is_null() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` in the spec is not an object"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{EnvVar, KeyValue, Mount};

    fn base() -> Spec {
        husk_runtime::spec::default_spec(false)
    }

    fn env(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    #[test]
    fn set_env_adds_and_replaces() {
        let s = apply(
            &base(),
            &[
                Edit::SetEnv(EnvVar {
                    name: "A".into(),
                    value: "1".into(),
                }),
                Edit::SetEnv(EnvVar {
                    name: "TERM".into(),
                    value: "dumb".into(),
                }),
            ],
        )
        .unwrap();
        let env = env(&s);
        assert!(env.contains(&"A=1".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("TERM=")).count(), 1);
        assert!(env.contains(&"TERM=dumb".to_string()));
    }

    #[test]
    fn drop_capability_removes_it_from_every_set() {
        let s = apply(&base(), &[Edit::DropCapability("CAP_KILL".into())]).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        for set in ["bounding", "effective", "permitted"] {
            let list = v["process"]["capabilities"][set].as_array().unwrap();
            assert!(!list.iter().any(|c| c == "CAP_KILL"), "{set}");
        }
        // Absent capabilities are fine; unknown names are not.
        apply(&base(), &[Edit::DropCapability("CAP_SYS_ADMIN".into())]).unwrap();
        let e = apply(&base(), &[Edit::DropCapability("NET_RAW".into())]).unwrap_err();
        assert!(e.reason.contains("CAP_NET_RAW"), "{e}");
    }

    #[test]
    fn add_mount_refuses_relative_and_duplicate_destinations() {
        let m = |d: &str| {
            Edit::AddMount(Mount {
                destination: d.into(),
                kind: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["nosuid".into()],
            })
        };
        let s = apply(&base(), &[m("/scratch")]).unwrap();
        assert!(s
            .mounts()
            .iter()
            .flatten()
            .any(|x| x.destination() == std::path::Path::new("/scratch")));
        assert!(apply(&base(), &[m("scratch")]).is_err());
        let e = apply(&base(), &[m("/proc")]).unwrap_err();
        assert!(e.reason.contains("already"), "{e}");
    }

    #[test]
    fn readonly_rootfs_resources_and_annotations() {
        let s = apply(
            &base(),
            &[
                Edit::SetReadonlyRootfs(true),
                Edit::SetResource(ResourceLimit::MemoryBytes(64 << 20)),
                Edit::SetResource(ResourceLimit::Pids(100)),
                Edit::SetResource(ResourceLimit::CpuPeriod(100_000)),
                Edit::AddAnnotation(KeyValue {
                    key: "k".into(),
                    value: "v".into(),
                }),
            ],
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(v["annotations"]["k"], "v");
    }

    #[test]
    fn out_of_range_limits_and_bad_names_are_invalid_and_apply_nothing() {
        for bad in [
            Edit::SetResource(ResourceLimit::MemoryBytes(0)),
            Edit::SetResource(ResourceLimit::CpuPeriod(10)),
            Edit::SetResource(ResourceLimit::Pids(0)),
            Edit::SetEnv(EnvVar {
                name: "A=B".into(),
                value: "x".into(),
            }),
            Edit::AddAnnotation(KeyValue {
                key: String::new(),
                value: "x".into(),
            }),
        ] {
            let e = apply(&base(), &[Edit::SetReadonlyRootfs(true), bad.clone()]).unwrap_err();
            assert_eq!(e.index, 1, "{bad:?}: {e}");
        }
        // Swap below the memory limit.
        let e = apply(
            &base(),
            &[
                Edit::SetResource(ResourceLimit::MemoryBytes(100 << 20)),
                Edit::SetResource(ResourceLimit::MemorySwapBytes(50 << 20)),
            ],
        )
        .unwrap_err();
        assert!(e.reason.contains("below"), "{e}");
    }
}
