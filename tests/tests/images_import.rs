//! The image store on the real kernel: the busybox image built by the test
//! helpers is imported, mounted with overlayfs and run by husk-runtime; a
//! second image shares its base; a docker archive; prune; no mount left.

use std::fs;
use std::path::{Path, PathBuf};

use husk_core::images::{ImageStore, ImportOptions};
use husk_tests::image::{gzip, sha256_digest, write_tar};
use husk_tests::leaks::{assert_no_leaks, mounts_matching};
use husk_tests::{require_root, unique_id, Bundle, HuskRuntime, ImageBuilder};
use tempfile::TempDir;

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

fn import(store: &ImageStore, path: &Path, name: &str) -> Vec<husk_core::images::ImportedImage> {
    store
        .import(
            path,
            &ImportOptions {
                name: Some(name.into()),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("importing {}: {e}", path.display()))
}

/// A layer dir with one file.
fn extra_layer(dir: &Path, file: &str, text: &str) -> PathBuf {
    let l = dir.join(format!("layer-{file}"));
    fs::create_dir_all(l.join("etc")).unwrap();
    fs::write(l.join("etc").join(file), text).unwrap();
    l
}

/// A bundle whose `root.path` is the mounted overlay.
fn bundle_at(rootfs: &Path, args: &[&str]) -> TempDir {
    let dir = tempdir("husk-bundle-");
    let mut spec = Bundle::default_spec(args);
    spec.root_mut()
        .as_mut()
        .unwrap()
        .set_path(rootfs.to_path_buf());
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn busybox_layout_runs_from_an_overlay_rootfs() {
    require_root!();
    let work = tempdir("husk-images-");
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let layout = work.path().join("busybox-layout");
    let info = ImageBuilder::busybox().write_dir(&layout);
    let imported = import(&store, &layout, "busybox:latest");
    assert_eq!(imported[0].digest.to_string(), info.manifest_digest);
    assert_eq!(imported[0].unpacked, 1);

    let inspect = store.inspect("busybox").unwrap();
    assert_eq!(inspect.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(
        inspect.layers[0].diff_id.to_string(),
        info.layers[0].diff_id
    );

    let id = unique_id("img-run");
    let c = work.path().join("containers").join(&id);
    let rootfs = c.join("rootfs");
    let m = store
        .mount_rootfs("busybox", &id, &rootfs, &c.join("upper"), &c.join("work"))
        .unwrap();
    assert_eq!(m.lowerdirs, store.mounts("busybox").unwrap());
    let bundle = bundle_at(
        &rootfs,
        &["/bin/sh", "-c", "echo hello; echo written > /new-file"],
    );
    let rt = HuskRuntime::new();
    let out = rt.output(&["run", "--bundle", bundle.path().to_str().unwrap(), &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "hello");
    drop(rt);
    store.unmount_rootfs(&id, &rootfs).unwrap();
    // The write went to the container's upper dir, not the shared snapshot.
    assert_eq!(
        fs::read_to_string(c.join("upper/new-file")).unwrap(),
        "written\n"
    );
    assert!(!m.lowerdirs[0].join("new-file").exists());
    assert_no_leaks(&id);
    assert!(mounts_matching(&work.path().display().to_string()).is_empty());
}

#[test]
fn second_image_shares_the_base_and_prune_frees_only_it() {
    require_root!();
    let work = tempdir("husk-images-");
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let base_layout = work.path().join("base");
    ImageBuilder::busybox().write_tar(&base_layout.with_extension("tar"));
    let a = import(&store, &base_layout.with_extension("tar"), "busybox:latest");
    let blobs_after_a = store.content().list().unwrap().len();
    let bytes_after_a: u64 = store
        .content()
        .list()
        .unwrap()
        .iter()
        .map(|d| store.content().size(d).unwrap())
        .sum();
    assert_eq!(blobs_after_a, 3, "manifest, config, one layer");

    let extra = extra_layer(work.path(), "motd", "second image\n");
    let app_tar = work.path().join("app.tar");
    ImageBuilder::busybox().layer(&extra).write_tar(&app_tar);
    let b = import(&store, &app_tar, "app:v1");
    assert_eq!(b[0].chain[0], a[0].chain[0], "same base chain id");
    assert_eq!(b[0].unpacked, 1, "only the new layer is unpacked");
    let blobs = store.content().list().unwrap();
    assert_eq!(
        blobs.len(),
        6,
        "the base layer blob is stored once: {blobs:?}"
    );
    assert_eq!(store.snapshots().list().unwrap().len(), 2);
    let bytes_now: u64 = blobs.iter().map(|d| store.content().size(d).unwrap()).sum();
    let busybox_layer = store.inspect("busybox").unwrap().layers[0].size;
    assert!(
        bytes_now - bytes_after_a < busybox_layer,
        "the second image added {} bytes, less than the base layer's {busybox_layer}",
        bytes_now - bytes_after_a
    );

    // The app runs with both layers.
    let id = unique_id("img-app");
    let c = work.path().join(&id);
    let rootfs = c.join("rootfs");
    store
        .mount_rootfs("app:v1", &id, &rootfs, &c.join("upper"), &c.join("work"))
        .unwrap();
    let bundle = bundle_at(&rootfs, &["/bin/cat", "/etc/motd"]);
    let rt = HuskRuntime::new();
    let out = rt.run_ok(&["run", "--bundle", bundle.path().to_str().unwrap(), &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second image\n");
    drop(rt);

    // While mounted, rmi + prune keep the snapshots the mount uses.
    store.remove("app:v1").unwrap();
    let r = store.prune().unwrap();
    assert!(r.snapshots_removed.is_empty(), "{r:?}");
    assert_eq!(
        r.blobs_removed.len(),
        3,
        "app's manifest, config, top layer: {r:?}"
    );
    store.unmount_rootfs(&id, &rootfs).unwrap();
    let r = store.prune().unwrap();
    assert_eq!(r.snapshots_removed, vec![b[0].chain[1].clone()]);
    assert!(r.blobs_removed.is_empty());
    // busybox is intact and still runs.
    assert_eq!(store.content().list().unwrap().len(), 3);
    assert_eq!(
        store.snapshots().list().unwrap(),
        vec![a[0].chain[0].clone()]
    );
    assert!(store.mounts("busybox").unwrap()[0]
        .join("bin/busybox")
        .exists());
    assert_no_leaks(&id);
    assert!(mounts_matching(&work.path().display().to_string()).is_empty());
}

#[test]
fn docker_archive_built_by_hand_imports_and_runs() {
    require_root!();
    let work = tempdir("husk-images-");
    let store = ImageStore::open(work.path().join("store")).unwrap();
    // docker save format: manifest.json, <config hex>.json, <id>/layer.tar.
    let mut layer = Vec::new();
    write_tar(husk_tests::busybox::cached_rootfs(), &mut layer).unwrap();
    let diff_id = sha256_digest(&layer);
    let (os, arch) = ("linux", husk_tests::image::host_arch().to_string());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": os,
        "config": {"Cmd": ["/bin/echo", "hello from docker"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let config_hex = sha256_digest(&config)
        .trim_start_matches("sha256:")
        .to_string();
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["docker.io/library/busybox:hand"],
        "Layers": ["0123abcd/layer.tar"],
    }]);
    let archive = work.path().join("docker.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, bytes).unwrap();
        };
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        add(&format!("{config_hex}.json"), &config);
        add("0123abcd/layer.tar", &layer);
        add("repositories", b"{}");
        b.finish().unwrap();
    }
    let r = store.import(&archive, &ImportOptions::default()).unwrap();
    assert_eq!(r[0].name, "docker.io/library/busybox:hand");
    assert_eq!(r[0].chain[0].to_string(), diff_id);
    let i = store.inspect("docker.io/library/busybox:hand").unwrap();
    assert_eq!(i.config.cmd.as_ref().unwrap()[1], "hello from docker");

    // Same layer as the OCI busybox (gzipped there): same snapshot.
    let layout = work.path().join("oci");
    let info = ImageBuilder::busybox().write_dir(&layout);
    assert_eq!(info.layers[0].diff_id, diff_id);
    let o = import(&store, &layout, "busybox:oci");
    assert_eq!(o[0].unpacked, 0, "the docker archive's snapshot is reused");
    assert_eq!(store.snapshots().list().unwrap().len(), 1);

    let id = unique_id("img-docker");
    let c = work.path().join(&id);
    let rootfs = c.join("rootfs");
    store
        .mount_rootfs(
            "docker.io/library/busybox:hand",
            &id,
            &rootfs,
            &c.join("upper"),
            &c.join("work"),
        )
        .unwrap();
    let bundle = bundle_at(&rootfs, &["/bin/echo", "hello from docker"]);
    let rt = HuskRuntime::new();
    let out = rt.run_ok(&["run", "--bundle", bundle.path().to_str().unwrap(), &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from docker\n");
    drop(rt);
    store.unmount_rootfs(&id, &rootfs).unwrap();
    assert_no_leaks(&id);
    let _ = gzip; // (layouts gzip their layers; docker archives do not)
}

#[test]
fn a_corrupt_layout_is_refused_naming_the_blob() {
    let work = tempdir("husk-images-");
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let layout = work.path().join("l");
    let info = ImageBuilder::busybox().write_dir(&layout);
    let blob = layout
        .join("blobs/sha256")
        .join(info.layers[0].digest.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let e = store
        .import(
            &layout,
            &ImportOptions {
                name: Some("bad:1".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(&info.layers[0].digest), "{e}");
    assert!(store.list().unwrap().is_empty());
    assert!(store
        .content()
        .list()
        .unwrap()
        .iter()
        .all(|d| d.to_string() != info.layers[0].digest));
    assert!(store.snapshots().list().unwrap().is_empty());
}
