//! `husk image import/ls/inspect/rm/prune` through huskd: shared layers are
//! stored once, prune frees what no image or container uses.

mod core_common;

use core_common::{Huskd, IMAGE};
use husk_tests::{require_root, ImageBuilder};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn import_shares_layers_and_prune_frees_space() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    // A second image: busybox's layer plus one of its own.
    let extra = d.tmp.path().join("extra");
    std::fs::create_dir_all(extra.join("opt")).unwrap();
    std::fs::write(extra.join("opt/hello"), vec![b'x'; 100_000]).unwrap();
    let tar = d.tmp.path().join("two.tar");
    ImageBuilder::busybox().layer(&extra).write_tar(&tar);
    let r = json(&d.husk_ok(&[
        "--format",
        "json",
        "image",
        "import",
        "--name",
        "husk.test/two:1",
        tar.to_str().unwrap(),
    ]));
    assert_eq!(r[0]["unpacked"], 1, "only the new layer is unpacked: {r}");
    let ls = d.husk_ok(&["images"]);
    assert!(ls.contains(IMAGE) && ls.contains("husk.test/two:1"), "{ls}");
    let inspect = json(&d.husk_ok(&["image", "inspect", "husk.test/two:1"]));
    let base = json(&d.husk_ok(&["image", "inspect", IMAGE]));
    assert_eq!(
        inspect["Layers"][0]["ChainId"], base["Layers"][0]["ChainId"],
        "{inspect}"
    );
    assert_eq!(
        d.husk_ok(&["run", "--rm", "husk.test/two:1", "wc", "-c", "/opt/hello"])
            .trim(),
        "100000 /opt/hello"
    );
    // Nothing to prune while both are named.
    let p = json(&d.husk_ok(&["--format", "json", "image", "prune"]));
    assert_eq!(p["bytes_freed"], 0, "{p}");
    d.husk_ok(&["rmi", "husk.test/two:1"]);
    let p = json(&d.husk_ok(&["--format", "json", "image", "prune"]));
    assert!(p["bytes_freed"].as_u64().unwrap() >= 100_000, "{p}");
    assert_eq!(
        p["snapshots_removed"].as_array().unwrap().len(),
        1,
        "the shared base stays: {p}"
    );
    assert_eq!(d.husk_ok(&["run", "--rm", IMAGE, "echo", "ok"]), "ok\n");
}

#[test]
fn prune_keeps_the_layers_of_a_running_container_whose_image_was_removed() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sleep", "1000"])
        .trim()
        .to_string();
    d.wait_status(&id, "running");
    d.husk_ok(&["rmi", IMAGE]);
    let p = json(&d.husk_ok(&["--format", "json", "image", "prune"]));
    assert!(p["snapshots_removed"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(
        d.husk_ok(&["exec", &id, "echo", "still here"]),
        "still here\n"
    );
    d.husk_ok(&["rm", "-f", &id]);
    let p = json(&d.husk_ok(&["--format", "json", "image", "prune"]));
    assert_eq!(p["snapshots_removed"].as_array().unwrap().len(), 1, "{p}");
}
