//! Store tests on hand-written layouts: dedup, names, inspect, rmi, prune,
//! corrupt blobs, concurrent imports. No root needed.

use std::fs;

use super::*;
use crate::images::testutil::{tar_of, write_layout, E};

fn base() -> Vec<u8> {
    tar_of(&[E::dir("bin"), E::file("bin/sh", b"shell"), E::dir("etc")])
}

fn app(n: &str) -> Vec<u8> {
    tar_of(&[E::dir("app"), E::file(&format!("app/{n}"), n.as_bytes())])
}

struct T {
    _t: tempfile::TempDir,
    dir: PathBuf,
    store: ImageStore,
}

fn setup() -> T {
    let t = tempfile::Builder::new()
        .prefix("husk-store-")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    T {
        dir: t.path().to_path_buf(),
        store,
        _t: t,
    }
}

fn layout(t: &T, name: &str, layers: &[Vec<u8>], ref_name: &str) -> PathBuf {
    let p = t.dir.join(name);
    write_layout(&p, layers, ref_name, &["/bin/sh"]);
    p
}

#[test]
fn shared_base_is_stored_and_unpacked_once() {
    let t = setup();
    let a = layout(&t, "a", &[base(), app("one")], "a:1");
    let b = layout(&t, "b", &[base(), app("two")], "b:1");
    let ia = t.store.import(&a, &ImportOptions::default()).unwrap();
    assert_eq!(ia.len(), 1);
    assert_eq!(ia[0].name, "a:1");
    assert_eq!(ia[0].unpacked, 2);
    // 3 blobs for a: manifest, config, 2 layers.
    assert_eq!(t.store.content().list().unwrap().len(), 4);
    let ib = t.store.import(&b, &ImportOptions::default()).unwrap();
    assert_eq!(ib[0].unpacked, 1, "the base snapshot is shared");
    assert_eq!(ib[0].chain[0], ia[0].chain[0]);
    // b adds its manifest, config and one layer; the base layer is shared.
    assert_eq!(t.store.content().list().unwrap().len(), 7);
    assert_eq!(t.store.snapshots().list().unwrap().len(), 3);
    let refs = crate::images::gc::snapshot_refs(&t.store).unwrap();
    assert_eq!(refs[&ia[0].chain[0]], 2);
    // Lower dirs, top first, share the base directory.
    let ma = t.store.mounts("a:1").unwrap();
    let mb = t.store.mounts("b:1").unwrap();
    assert_eq!(ma.len(), 2);
    assert_eq!(ma[1], mb[1]);
    assert_eq!(fs::read(ma[1].join("bin/sh")).unwrap(), b"shell");
    assert_eq!(fs::read(ma[0].join("app/one")).unwrap(), b"one");
    // Importing again changes nothing.
    let again = t.store.import(&a, &ImportOptions::default()).unwrap();
    assert_eq!(again[0].unpacked, 0);
    assert_eq!(t.store.content().list().unwrap().len(), 7);
}

#[test]
fn inspect_list_rmi_and_prune() {
    let t = setup();
    let a = layout(&t, "a", &[base(), app("one")], "a:1");
    let b = layout(&t, "b", &[base(), app("two")], "b:1");
    t.store.import(&a, &ImportOptions::default()).unwrap();
    let opts = ImportOptions {
        name: Some("renamed:v2".into()),
        ..Default::default()
    };
    t.store.import(&b, &opts).unwrap();
    let names: Vec<_> = t
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a:1", "renamed:v2"]);

    let i = t.store.inspect("a:1").unwrap();
    assert_eq!(i.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(i.config.env, Some(vec!["PATH=/bin".to_string()]));
    assert_eq!(i.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(i.config.user.as_deref(), Some("1:2"));
    assert_eq!(i.layers.len(), 2);
    assert!(i.size > 0 && i.unpacked_size == 5 + 3);
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(json["Config"]["Cmd"][0], "/bin/sh");

    // Nothing unreferenced yet.
    let r = t.store.prune().unwrap();
    assert!(
        r.blobs_removed.is_empty() && r.snapshots_removed.is_empty(),
        "{r:?}"
    );

    t.store.remove("renamed:v2").unwrap();
    assert!(matches!(
        t.store.inspect("renamed:v2"),
        Err(ImageError::ImageNotFound { .. })
    ));
    let r = t.store.prune().unwrap();
    // b's manifest, config and top layer; its top snapshot. The base stays.
    assert_eq!(r.blobs_removed.len(), 3, "{r:?}");
    assert_eq!(r.snapshots_removed.len(), 1, "{r:?}");
    assert!(r.bytes_freed > 0);
    assert_eq!(t.store.content().list().unwrap().len(), 4);
    assert_eq!(t.store.mounts("a:1").unwrap().len(), 2);

    t.store.remove("a:1").unwrap();
    t.store.prune().unwrap();
    assert!(t.store.content().list().unwrap().is_empty());
    assert!(t.store.snapshots().list().unwrap().is_empty());
    let e = t.store.remove("a:1").unwrap_err().to_string();
    assert!(e.contains("husk images"), "{e}");
}

#[test]
fn leases_keep_snapshots_from_prune() {
    let t = setup();
    let a = layout(&t, "a", &[base()], "a:1");
    t.store.import(&a, &ImportOptions::default()).unwrap();
    let (_, r) = t.store.get("a:1").unwrap();
    write_atomic(
        &t.store.root().join("leases/c1.json"),
        &serde_json::to_vec(&Lease {
            image: "a:1".into(),
            chain: r.chain.clone(),
            target: "/x".into(),
        })
        .unwrap(),
    )
    .unwrap();
    t.store.remove("a:1").unwrap();
    let report = t.store.prune().unwrap();
    assert!(report.snapshots_removed.is_empty(), "{report:?}");
    assert!(t.store.snapshots().exists(&r.chain[0]));
    fs::remove_file(t.store.root().join("leases/c1.json")).unwrap();
    assert_eq!(t.store.prune().unwrap().snapshots_removed, r.chain);
}

#[test]
fn latest_is_implied() {
    let t = setup();
    let a = layout(&t, "a", &[base()], "busybox:latest");
    t.store.import(&a, &ImportOptions::default()).unwrap();
    assert_eq!(t.store.get("busybox").unwrap().0, "busybox:latest");
}

#[test]
fn a_tampered_layer_is_refused_by_digest_and_nothing_stays() {
    let t = setup();
    let a = layout(&t, "a", &[base(), app("one")], "a:1");
    // Overwrite the top layer blob with other (valid gzip) bytes.
    let m: serde_json::Value = {
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(a.join("index.json")).unwrap()).unwrap();
        let md = Digest::parse(idx["manifests"][0]["digest"].as_str().unwrap()).unwrap();
        serde_json::from_slice(&fs::read(a.join("blobs/sha256").join(md.hex())).unwrap()).unwrap()
    };
    let top = Digest::parse(m["layers"][1]["digest"].as_str().unwrap()).unwrap();
    let size = m["layers"][1]["size"].as_u64().unwrap() as usize;
    let mut evil = crate::images::testutil::gzip(&app("evil"));
    evil.resize(size, 0);
    fs::write(a.join("blobs/sha256").join(top.hex()), &evil).unwrap();
    let e = t.store.import(&a, &ImportOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&top.to_string()), "{msg}");
    assert!(!t.store.content().contains(&top));
    assert!(t.store.list().unwrap().is_empty());
    assert!(t.store.snapshots().list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(t.store.content().ingest_dir())
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_hostile_layer_is_refused_and_leaves_no_snapshot() {
    let t = setup();
    let evil = tar_of(&[E::symlink("etc", "/etc"), E::file("etc/evil", b"x")]);
    let a = layout(&t, "a", &[base(), evil], "a:1");
    let e = t.store.import(&a, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImageError::UnsafeEntry { .. }), "{e}");
    assert!(!Path::new("/etc/evil").exists());
    assert!(t.store.list().unwrap().is_empty());
    assert!(t.store.snapshots().leftovers().unwrap().is_empty());
    // The good base was unpacked before; prune removes it (no image).
    let r = t.store.prune().unwrap();
    assert_eq!(r.snapshots_removed.len(), 1);
}

#[test]
fn names_are_required_and_checked() {
    let t = setup();
    let a = layout(&t, "a", &[base()], "");
    let idx = a.join("index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&idx).unwrap()).unwrap();
    v["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    fs::write(&idx, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = t
        .store
        .import(&a, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("give it a name"), "{e}");
    let bad = ImportOptions {
        name: Some("has space".into()),
        ..Default::default()
    };
    assert!(matches!(
        t.store.import(&a, &bad),
        Err(ImageError::InvalidName { .. })
    ));
    let ok = ImportOptions {
        name: Some("x:y".into()),
        ..Default::default()
    };
    t.store.import(&a, &ok).unwrap();
}

#[test]
fn concurrent_imports_do_not_corrupt_the_store() {
    let t = setup();
    let paths: Vec<_> = (0..4)
        .map(|i| {
            layout(
                &t,
                &format!("l{i}"),
                &[base(), app(&format!("n{i}"))],
                &format!("img:{i}"),
            )
        })
        .collect();
    std::thread::scope(|s| {
        for p in &paths {
            let store = t.store.clone();
            s.spawn(move || store.import(p, &ImportOptions::default()).unwrap());
        }
    });
    assert_eq!(t.store.list().unwrap().len(), 4);
    // 4 x (manifest, config, top layer) + 1 shared base layer.
    assert_eq!(t.store.content().list().unwrap().len(), 13);
    assert_eq!(t.store.snapshots().list().unwrap().len(), 5);
    assert!(t.store.snapshots().leftovers().unwrap().is_empty());
    for i in 0..4 {
        assert_eq!(t.store.mounts(&format!("img:{i}")).unwrap().len(), 2);
    }
}

#[test]
fn layout_tar_and_docker_archive() {
    let t = setup();
    // An OCI layout as a tar.
    let a = layout(&t, "a", &[base(), app("one")], "a:1");
    let tar_path = t.dir.join("a.tar");
    {
        let f = fs::File::create(&tar_path).unwrap();
        let mut b = tar::Builder::new(f);
        b.append_dir_all(".", &a).unwrap();
        b.finish().unwrap();
    }
    let r = t
        .store
        .import(&tar_path, &ImportOptions::default())
        .unwrap();
    assert_eq!(r[0].name, "a:1");
    assert!(t.store.snapshots().list().unwrap().len() == 2);

    // A docker archive sharing the base (uncompressed layers).
    let d = t.dir.join("docker.tar");
    let layers = [base(), app("dock")];
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let (os, arch) = crate::images::layout::host_platform();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": os, "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = Digest::of(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", cd.hex()),
        "RepoTags": ["dock:latest"],
        "Layers": ["l0/layer.tar", "l1/layer.tar"],
    }]);
    {
        let mut b = tar::Builder::new(fs::File::create(&d).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, bytes).unwrap();
        };
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        add(&format!("{}.json", cd.hex()), &config);
        add("l0/layer.tar", &layers[0]);
        add("l1/layer.tar", &layers[1]);
        b.finish().unwrap();
    }
    let r = t.store.import(&d, &ImportOptions::default()).unwrap();
    assert_eq!(r[0].name, "dock:latest");
    assert_eq!(r[0].config, cd);
    assert_eq!(r[0].unpacked, 1, "the base is shared with the OCI image");
    let i = t.store.inspect("dock").unwrap();
    assert_eq!(i.layers.len(), 2);
    let top = t.store.mounts("dock").unwrap();
    assert_eq!(fs::read(top[0].join("app/dock")).unwrap(), b"dock");
    assert!(t.store.snapshots().leftovers().unwrap().is_empty());
    // No staged file is left over.
    assert_eq!(
        fs::read_dir(t.store.content().ingest_dir())
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn inspect_is_cached_until_the_index_changes() {
    let t = setup();
    let a = layout(&t, "a", &[base(), app("one")], "a:1");
    let b = layout(&t, "b", &[base(), app("two")], "b:1");
    t.store.import(&a, &ImportOptions::default()).unwrap();
    assert!(t.store.inspect_cached("a:1").is_none(), "never inspected");
    let i = t.store.inspect("a:1").unwrap();
    assert_eq!(t.store.inspect_cached("a:1"), Some(i.clone()));
    // A clone (the daemon hands clones to blocking threads) shares it.
    assert_eq!(t.store.clone().inspect_cached("a:1"), Some(i.clone()));
    assert!(t.store.inspect_cached("b:1").is_none());

    // Any change of the index drops what was cached: a name moved to
    // another image must not be served from before.
    let opts = ImportOptions {
        name: Some("a:1".into()),
        ..Default::default()
    };
    t.store.import(&b, &opts).unwrap();
    assert!(t.store.inspect_cached("a:1").is_none());
    let moved = t.store.inspect("a:1").unwrap();
    assert_ne!(moved.digest, i.digest);
    assert_eq!(t.store.inspect_cached("a:1"), Some(moved));
    t.store.remove("a:1").unwrap();
    assert!(t.store.inspect_cached("a:1").is_none());
}
