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
    HardenContext, HardeningReport, IdAllocator, Profile as HardenedProfile,
};
use oci_spec::runtime::{Process, Spec};

use crate::error::{Result, ShimError};
use crate::Profile;

/// The operator's profile, or an error naming the file that is wrong.
fn operator_profile() -> Result<HardenedProfile> {
    HardenedProfile::effective()
        .map(|(p, _)| p)
        .map_err(|e| ShimError::FailedPrecondition(format!("{e}; fix the file or remove it")))
}

/// Rewrites `spec` (of the container `container_id` in `bundle`) to the
/// hardened profile: refuses symlinked paths and host namespaces,
/// allocates the container's uid range, and hardens. `None` for the native
/// profile, which leaves the spec alone.
pub fn apply(
    profile: Profile,
    spec: &mut Spec,
    container_id: &str,
    bundle: &Path,
) -> Result<Option<HardeningReport>> {
    if profile == Profile::Native {
        return Ok(None);
    }
    let hardened = operator_profile()?;
    check_bundle(spec, bundle).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
    let ids = if hardened.user_namespace.enabled {
        let range = IdAllocator::from_profile(&hardened.user_namespace)
            .allocate(container_id, bundle)
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        Some(range)
    } else {
        None
    };
    let ctx = HardenContext {
        container_id: container_id.to_string(),
        ids,
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

/// [`apply`] on `BUNDLE/config.json`, written back in place (atomically)
/// for the runtime to read.
pub fn apply_to_bundle(
    profile: Profile,
    container_id: &str,
    bundle: &Path,
) -> Result<Option<HardeningReport>> {
    if profile == Profile::Native {
        return Ok(None);
    }
    let mut spec = husk_runtime::spec::load(bundle)?;
    let report = apply(profile, &mut spec, container_id, bundle)?;
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

/// Frees the container's uid range (on delete, or after a failed create).
/// Failures are logged: a range left behind is reclaimed once the bundle
/// directory is gone.
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
        assert!(
            apply(Profile::Native, &mut spec, "c", Path::new("/nonexistent"))
                .unwrap()
                .is_none()
        );
        assert_eq!(serde_json::to_value(&spec).unwrap(), before);
        let mut p = Process::default();
        let before = serde_json::to_value(&p).unwrap();
        apply_exec(Profile::Native, &mut p).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), before);
    }
}
