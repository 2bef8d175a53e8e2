//! OCI runtime bundles: a temp dir with `config.json` and `rootfs/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, Process, RootBuilder, Spec};
use tempfile::TempDir;

use crate::busybox;

/// An OCI bundle in a `husk-bundle-*` temp dir, removed on drop.
///
/// [`Bundle::busybox`] writes a runnable bundle at once; to change the spec,
/// edit it through [`Bundle::spec_mut`] (or [`Bundle::process_mut`],
/// [`Bundle::linux_mut`]) and call [`Bundle::save`], or do both with
/// [`Bundle::update_spec`].
///
/// Delete any container created from the bundle before dropping it (for
/// instance with [`crate::HuskRuntime`], whose drop does that).
#[derive(Debug)]
pub struct Bundle {
    dir: TempDir,
    spec: Spec,
}

impl Bundle {
    /// A bundle running `args` in a copy of the busybox rootfs.
    ///
    /// The spec is [`Bundle::default_spec`]: oci-spec's `Spec::default()`
    /// (runc's default spec: pid, net, ipc, uts, mount and cgroup namespaces,
    /// the default mounts, capabilities and masked paths) with `args`, no
    /// terminal, a writable `rootfs` and the hostname `husk`.
    pub fn busybox(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("husk-bundle-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a bundle temp dir: {e}"));
        busybox::install_rootfs(&dir.path().join("rootfs"));
        let bundle = Bundle {
            dir,
            spec: Self::default_spec(args),
        };
        bundle.save();
        bundle
    }

    /// The spec [`Bundle::busybox`] starts from.
    pub fn default_spec(args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut process = Process::default();
        process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .expect("a root with path and readonly is complete"),
        ));
        spec.set_hostname(Some("husk".to_string()));
        spec
    }

    /// The bundle directory (pass it as `--bundle`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle's `rootfs/`.
    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    /// The bundle's `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.json")
    }

    /// The spec as last set (saved or not).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec, to edit; call [`Bundle::save`] afterwards.
    pub fn spec_mut(&mut self) -> &mut Spec {
        &mut self.spec
    }

    /// The spec's `process` (created if absent), to edit.
    pub fn process_mut(&mut self) -> &mut Process {
        self.spec.process_mut().get_or_insert_with(Process::default)
    }

    /// The spec's `linux` section (created if absent), to edit.
    pub fn linux_mut(&mut self) -> &mut Linux {
        self.spec.linux_mut().get_or_insert_with(Linux::default)
    }

    /// Sets `process.args` (not saved).
    pub fn set_args(&mut self, args: &[&str]) -> &mut Self {
        self.process_mut()
            .set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// Edits the spec with `f` and saves it.
    pub fn update_spec(&mut self, f: impl FnOnce(&mut Spec)) {
        f(&mut self.spec);
        self.save();
    }

    /// Writes the spec to `config.json` (pretty-printed, for people reading a
    /// failed test's bundle).
    pub fn save(&self) {
        let path = self.config_path();
        let json = serde_json::to_vec_pretty(&self.spec).expect("a Spec serializes");
        let tmp = path.with_extension("json.tmp");
        fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .and_then(|()| fs::rename(&tmp, &path))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Keeps the bundle directory after the test (for debugging) and returns
    /// its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_runnable_shape() {
        let spec = Bundle::default_spec(&["/bin/echo", "hello"]);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["/bin/echo", "hello"])
        );
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["hostname"], "husk");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(ns.contains(&want), "{want} missing from {ns:?}");
        }
    }
}
