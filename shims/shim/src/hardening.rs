//! The hardened profile in the shim: what `containerd-shim-husk-hardened-v2`
//! does to every container before the runtime creates it, and undoes on
//! delete. A no-op for the native shim.
//!
//! The profile is the operator's ([`Profile::effective`]: the file named by
//! `$HUSK_HARDENED_PROFILE`, else /etc/husk/hardened.toml, else the
//! defaults), never the workload's: the spec is rewritten to it
//! (`husk_runtime::hardened::harden_spec`) after every other change to the
//! spec, so nothing that runs later can loosen it.
//!
//! A pod is one user namespace with one uid range, its sandbox's: the
//! pod's containers join them (`pod_of`; docs/hardened.md, "Pods").
//!
//! Call points (service.rs):
//! - create: [`apply_to_bundle`] (or [`apply`] on a spec the caller then
//!   writes to `BUNDLE/config.json`) after plugins changed the spec, after
//!   the rootfs is mounted (missing mount points are created in it) and
//!   before `Runtime::create`; on a later failure of the create, [`release`];
//! - exec: [`apply_exec`] on the process before `Runtime::exec`;
//! - delete (the Task service's and `delete.rs`'s): [`release`].

use std::path::Path;

use husk_runtime::hardened::{
    check_bundle, create_mount_points, harden_process, harden_spec, make_rootfs_reachable,
    HardenContext, HardeningReport, IdAllocator, IdRange, Profile as HardenedProfile,
};
use husk_runtime::state::Status;
use husk_runtime::Runtime;
use oci_spec::runtime::{Process, Spec};

use crate::error::{Result, ShimError};
use crate::start::SANDBOX_ID_ANNOTATION;
use crate::Profile;

/// The operator's profile, or an error naming the file that is wrong.
fn operator_profile() -> Result<HardenedProfile> {
    HardenedProfile::effective()
        .map(|(p, _)| p)
        .map_err(|e| ShimError::FailedPrecondition(format!("{e}; fix the file or remove it")))
}

/// Rewrites `spec` (of the container `container_id` in `bundle`) to the
/// hardened profile: refuses symlinked paths and host namespaces, gives
/// the container its uid range (its own, or its pod's: see [`pod_of`]),
/// and hardens. `runtime` is the shim's, which runs the pod's sandbox.
/// `None` for the native profile, which leaves the spec alone.
pub fn apply(
    profile: Profile,
    spec: &mut Spec,
    container_id: &str,
    bundle: &Path,
    runtime: &Runtime,
) -> Result<Option<HardeningReport>> {
    if profile == Profile::Native {
        return Ok(None);
    }
    let hardened = operator_profile()?;
    check_bundle(spec, bundle).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
    let (ids, pod) = if hardened.user_namespace.enabled {
        let allocator = IdAllocator::from_profile(&hardened.user_namespace);
        let failed =
            |e: husk_runtime::hardened::Error| ShimError::FailedPrecondition(e.to_string());
        match pod_of(spec, container_id, runtime, &allocator)? {
            Some(pod) => {
                let range = allocator
                    .join(&pod.group, container_id, bundle)
                    .map_err(failed)?;
                if IdRange::of_process(pod.init_pid) != Some(range) {
                    release(profile, container_id);
                    return Err(ShimError::FailedPrecondition(format!(
                        "the init {} of pod sandbox {:?} is not in the pod's user namespace (ids {}..{}): \
                         the sandbox has exited; recreate the pod",
                        pod.init_pid,
                        pod.group,
                        range.start,
                        u64::from(range.start) + u64::from(range.size)
                    )));
                }
                tracing::info!(
                    container = container_id,
                    sandbox = pod.group,
                    "joins its pod sandbox's user namespace and uid range"
                );
                (Some(range), Some(pod.init_pid))
            }
            None => (
                Some(allocator.allocate(container_id, bundle).map_err(failed)?),
                None,
            ),
        }
    } else {
        (None, None)
    };
    let ctx = HardenContext {
        container_id: container_id.to_string(),
        ids,
        pod_sandbox_pid: pod,
    };
    let hardened_spec = harden_spec(spec, &hardened, &ctx).and_then(|report| {
        // The container's root cannot create them in a root-owned image.
        if let Some(ids) = ids {
            create_mount_points(spec, bundle)?;
            let changed = make_rootfs_reachable(spec, bundle, ids.start)?;
            if !changed.is_empty() {
                tracing::info!(?changed, "search permission for the container's root");
            }
        }
        Ok(report)
    });
    match hardened_spec {
        Ok(report) => {
            tracing::info!(
                container = container_id,
                report = %serde_json::to_string(&report).unwrap_or_default(),
                "hardened"
            );
            Ok(Some(report))
        }
        Err(e) => {
            release(profile, container_id);
            Err(ShimError::InvalidArgument(e.to_string()))
        }
    }
}

/// The pod sandbox a container belongs to.
#[derive(Debug, PartialEq, Eq)]
struct PodSandbox {
    /// Its uid range group: the sandbox's container id.
    group: String,
    /// Host pid of its init, whose user namespace the container joins.
    init_pid: i32,
}

/// The pod sandbox whose user namespace and uid range `container_id`
/// shares, if any:
/// - a CRI container (annotation `io.kubernetes.cri.sandbox-id` naming
///   another container): that sandbox, which this shim runs (a pod has one
///   shim); refused if it is not running, since its namespaces are gone;
/// - a spec that joins a namespace of another process by path
///   (`/proc/PID/ns/...`) whose user namespace maps one of the hardened
///   ranges: the group holding that range, through that process.
///
/// Anything else gets a range of its own.
fn pod_of(
    spec: &Spec,
    container_id: &str,
    runtime: &Runtime,
    allocator: &IdAllocator,
) -> Result<Option<PodSandbox>> {
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|s| !s.is_empty() && s.as_str() != container_id);
    if let Some(sandbox) = sandbox {
        let (record, status) = runtime.state(sandbox).map_err(|e| {
            ShimError::FailedPrecondition(format!(
                "container {container_id:?} belongs to pod sandbox {sandbox:?}, which this shim does not run ({e}); \
                 run the pod's sandbox with the hardened runtime first"
            ))
        })?;
        if !matches!(status, Status::Created | Status::Running | Status::Paused) {
            return Err(ShimError::FailedPrecondition(format!(
                "pod sandbox {sandbox:?} is {status}: its namespaces are gone, so container {container_id:?} cannot join them; recreate the pod"
            )));
        }
        return Ok(Some(PodSandbox {
            group: sandbox.clone(),
            init_pid: record.pid,
        }));
    }
    let joined_pids = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ns| proc_pid(ns.path().as_deref()?));
    for pid in joined_pids {
        let Some(range) = IdRange::of_process(pid) else {
            continue;
        };
        let group = allocator
            .group_of_range(range)
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        if let Some(group) = group {
            return Ok(Some(PodSandbox {
                group,
                init_pid: pid,
            }));
        }
    }
    Ok(None)
}

/// PID of a `/proc/PID/ns/TYPE` path.
fn proc_pid(path: &Path) -> Option<i32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.next()?.as_os_str() == "ns" && parts.next().is_some() && parts.next().is_none())
        .then_some(pid)
}

/// [`apply`] on `BUNDLE/config.json`, written back in place (atomically)
/// for the runtime to read.
pub fn apply_to_bundle(
    profile: Profile,
    container_id: &str,
    bundle: &Path,
    runtime: &Runtime,
) -> Result<Option<HardeningReport>> {
    if profile == Profile::Native {
        return Ok(None);
    }
    let mut spec = husk_runtime::spec::load(bundle)?;
    let report = apply(profile, &mut spec, container_id, bundle, runtime)?;
    let path = bundle.join("config.json");
    let written = serde_json::to_vec(&spec)
        .map_err(|e| ShimError::Internal(format!("serialize the hardened spec: {e}")))
        // No fsync: until create returns there is no container to recover.
        .and_then(|bytes| Ok(husk_runtime::state::replace_file(&path, &bytes)?));
    if let Err(e) = written {
        release(profile, container_id);
        return Err(e);
    }
    Ok(report)
}

/// The process rules for an `exec` into a hardened container: capability
/// sets cut to the profile, no_new_privs on (seccomp and Landlock come
/// from the container's state).
pub fn apply_exec(profile: Profile, process: &mut Process) -> Result<()> {
    if profile == Profile::Native {
        return Ok(());
    }
    let dropped = harden_process(process, &operator_profile()?);
    if !dropped.is_empty() {
        tracing::info!(
            ?dropped,
            "exec: capabilities the hardened profile does not grant"
        );
    }
    Ok(())
}

/// Ends the container's hold on its uid range (on delete, by the Task
/// service or `delete`, or after a failed create); a pod's range is freed
/// with its last member. Failures are logged: a hold left behind is
/// reclaimed once the bundle directory is gone.
pub fn release(profile: Profile, container_id: &str) {
    if profile == Profile::Native {
        return;
    }
    let hardened = match HardenedProfile::effective() {
        Ok((p, _)) => p,
        Err(e) => {
            tracing::warn!("release uid range of {container_id}: {e}; using the default state dir");
            HardenedProfile::default()
        }
    };
    if !hardened.user_namespace.enabled {
        return;
    }
    match IdAllocator::from_profile(&hardened.user_namespace).release(container_id) {
        Ok(true) => tracing::debug!(container = container_id, "uid range released"),
        Ok(false) => {}
        Err(e) => tracing::warn!("release uid range of {container_id}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_leaves_the_spec_alone() {
        let mut spec = Spec::default();
        let before = serde_json::to_value(&spec).unwrap();
        let runtime = Runtime::new("/nonexistent");
        assert!(apply(
            Profile::Native,
            &mut spec,
            "c",
            Path::new("/nonexistent"),
            &runtime
        )
        .unwrap()
        .is_none());
        assert_eq!(serde_json::to_value(&spec).unwrap(), before);
        let mut p = Process::default();
        let before = serde_json::to_value(&p).unwrap();
        apply_exec(Profile::Native, &mut p).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), before);
    }

    #[test]
    fn proc_namespace_paths_name_their_pid() {
        assert_eq!(proc_pid(Path::new("/proc/42/ns/pid")), Some(42));
        assert_eq!(proc_pid(Path::new("/proc/42/ns/net")), Some(42));
        for p in [
            "/var/run/netns/cni-1",
            "/proc/self/ns/pid",
            "/proc/42/ns",
            "/proc/42/ns/pid/x",
            "/proc/42/task/42/ns/pid",
        ] {
            assert_eq!(proc_pid(Path::new(p)), None, "{p}");
        }
    }
}
