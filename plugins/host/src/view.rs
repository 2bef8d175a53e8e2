//! The container view (`husk:plugin/types.container-view`) built from an
//! OCI runtime spec plus what only the caller knows (image, labels, runtime).

use serde_json::Value;

use crate::bindings::{
    Capabilities, ContainerView, EnvVar, Image, KeyValue, Mount, Namespace, NamespaceKind,
    Resources, User,
};

/// Annotations the view reads the image from when the caller does not know
/// it: husk's own, then the CRI plugin's.
pub const IMAGE_REF_ANNOTATIONS: &[&str] = &["io.husk.image.ref", "io.kubernetes.cri.image-name"];
pub const IMAGE_DIGEST_ANNOTATIONS: &[&str] = &["io.husk.image.digest"];

/// What the caller knows about a container beyond its spec.
#[derive(Debug, Clone)]
pub struct ContainerContext {
    /// The image reference; empty to read it from the annotations.
    pub image_ref: String,
    pub image_digest: Option<String>,
    pub labels: Vec<(String, String)>,
    /// `io.containerd.husk.v2`, `io.containerd.husk-hardened.v2`, `husk-runtime`.
    pub runtime: String,
    pub hardened: bool,
}

impl Default for ContainerContext {
    fn default() -> Self {
        ContainerContext {
            image_ref: String::new(),
            image_digest: None,
            labels: Vec::new(),
            runtime: "husk-runtime".into(),
            hardened: false,
        }
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn sorted_strs(v: Option<&Value>) -> Vec<String> {
    let mut s = strs(v);
    s.sort();
    s
}

fn kvs(v: Option<&Value>) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn namespace_kind(s: &str) -> Option<NamespaceKind> {
    Some(match s {
        "pid" => NamespaceKind::Pid,
        "network" => NamespaceKind::Network,
        "mount" => NamespaceKind::Mount,
        "ipc" => NamespaceKind::Ipc,
        "uts" => NamespaceKind::Uts,
        "user" => NamespaceKind::User,
        "cgroup" => NamespaceKind::Cgroup,
        "time" => NamespaceKind::Time,
        _ => return None,
    })
}

/// Builds the view of container `id` from its spec (as JSON, the form
/// mutations are applied to) and the caller's context.
pub fn build(id: &str, spec: &Value, ctx: &ContainerContext) -> ContainerView {
    let p = |ptr: &str| spec.pointer(ptr);
    // Looked up under `process` (and `linux/resources`) once, not by a
    // whole path each: no pointer string is built per field.
    let process = spec.get("process");
    let proc_ = |ptr: &str| process.and_then(|v| v.pointer(ptr));
    let annotations = kvs(p("/annotations"));
    let find = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| annotations.iter().find(|a| a.key == *k))
            .map(|a| a.value.clone())
    };
    let image = Image {
        reference: if ctx.image_ref.is_empty() {
            find(IMAGE_REF_ANNOTATIONS).unwrap_or_default()
        } else {
            ctx.image_ref.clone()
        },
        digest: ctx
            .image_digest
            .clone()
            .or_else(|| find(IMAGE_DIGEST_ANNOTATIONS)),
    };
    let env = strs(proc_("/env"))
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((n, v)) => EnvVar {
                name: n.to_owned(),
                value: v.to_owned(),
            },
            None => EnvVar {
                name: e,
                value: String::new(),
            },
        })
        .collect();
    let u32_at = |ptr: &str| proc_(ptr).and_then(Value::as_u64).map(|v| v as u32);
    let user = User {
        uid: u32_at("/user/uid").unwrap_or(0),
        gid: u32_at("/user/gid").unwrap_or(0),
        additional_gids: proc_("/user/additionalGids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_u64().map(|g| g as u32))
                    .collect()
            })
            .unwrap_or_default(),
        umask: u32_at("/user/umask"),
        username: proc_("/user/username")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let capabilities = proc_("/capabilities").map(|c| Capabilities {
        bounding: sorted_strs(c.get("bounding")),
        effective: sorted_strs(c.get("effective")),
        permitted: sorted_strs(c.get("permitted")),
        inheritable: sorted_strs(c.get("inheritable")),
        ambient: sorted_strs(c.get("ambient")),
    });
    let mounts = p("/mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| Mount {
                    destination: m["destination"].as_str().unwrap_or_default().to_owned(),
                    kind: m["type"].as_str().unwrap_or_default().to_owned(),
                    source: m["source"].as_str().unwrap_or_default().to_owned(),
                    options: strs(m.get("options")),
                })
                .collect()
        })
        .unwrap_or_default();
    let namespaces = p("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some(Namespace {
                        kind: namespace_kind(n["type"].as_str()?)?,
                        path: n["path"].as_str().map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let limits = p("/linux/resources");
    let r = |ptr: &str| limits.and_then(|v| v.pointer(ptr));
    let resources = Resources {
        memory_limit: r("/memory/limit").and_then(Value::as_i64),
        memory_swap: r("/memory/swap").and_then(Value::as_i64),
        cpu_shares: r("/cpu/shares").and_then(Value::as_u64),
        cpu_quota: r("/cpu/quota").and_then(Value::as_i64),
        cpu_period: r("/cpu/period").and_then(Value::as_u64),
        cpuset_cpus: r("/cpu/cpus").and_then(Value::as_str).map(str::to_owned),
        pids_limit: r("/pids/limit").and_then(Value::as_i64),
    };
    ContainerView {
        id: id.to_owned(),
        image,
        args: strs(proc_("/args")),
        env,
        cwd: proc_("/cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        user,
        capabilities,
        mounts,
        namespaces,
        resources,
        readonly_rootfs: p("/root/readonly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        annotations,
        labels: ctx
            .labels
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        runtime: ctx.runtime.clone(),
        hardened: ctx.hardened,
        spec_json: spec.to_string(),
    }
}

/// The view of `spec` for container `id`.
pub fn from_spec(
    id: &str,
    spec: &oci_spec::runtime::Spec,
    ctx: &ContainerContext,
) -> ContainerView {
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    build(id, &value, ctx)
}

/// A spec's annotations (as JSON) as the view has them: pairs sorted by key.
pub fn annotations(spec: &Value) -> Vec<(String, String)> {
    kvs(spec.pointer("/annotations"))
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// The caller's context recovered from a view (to rebuild it after edits).
pub fn context_of(view: &ContainerView) -> ContainerContext {
    ContainerContext {
        image_ref: view.image.reference.clone(),
        image_digest: view.image.digest.clone(),
        labels: view
            .labels
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        runtime: view.runtime.clone(),
        hardened: view.hardened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_of_the_default_spec() {
        let mut spec = husk_runtime::spec::default_spec(false);
        spec.set_annotations(Some(
            [(
                "io.husk.image.ref".to_string(),
                "docker.io/library/busybox:1".to_string(),
            )]
            .into_iter()
            .collect(),
        ));
        let v = from_spec("c1", &spec, &ContainerContext::default());
        assert_eq!(v.id, "c1");
        assert_eq!(v.args, vec!["sh"]);
        assert_eq!(v.image.reference, "docker.io/library/busybox:1");
        assert!(v.env.iter().any(|e| e.name == "PATH"));
        let caps = v.capabilities.unwrap();
        assert!(caps.bounding.contains(&"CAP_KILL".to_string()));
        assert!(v.namespaces.iter().any(|n| n.kind == NamespaceKind::Mount));
        assert!(v.mounts.iter().any(|m| m.destination == "/proc"));
    }
}
