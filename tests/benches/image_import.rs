//! How long importing and unpacking the busybox image takes: husk's image
//! store against containerd (`ctr image import`, which stores the blobs
//! and unpacks into the overlayfs snapshotter) and `umoci unpack`.
//!
//! ```text
//! cargo bench -p husk-tests --bench image_import          # as root
//! BENCH_ITERS=30 cargo bench -p husk-tests --bench image_import
//! ```
//!
//! Every contender starts from an empty store each time (husk: a fresh
//! store root; containerd: a fresh image name, removed with `--sync` and
//! its content garbage-collected after; umoci: a fresh bundle), round-robin.
//! Timed is the wall clock of the whole import + unpack of the one busybox
//! layer (gzipped tar, as in the OCI layout tar `husk_tests::ImageBuilder`
//! writes).
//!
//! Contenders:
//! - `husk (library)`: `ImageStore::import` of the layout tar, in process
//! - `husk unpack only`: `Snapshots::create` of the layer blob (no archive)
//! - `ctr image import`: containerd 1.6 on a private socket (gRPC round
//!   trips and its own process included, which husk's in-process number is
//!   not: compare with that in mind)
//! - `umoci unpack`: the OCI layout dir to a runtime bundle

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use husk_core::images::snapshots::Snapshots;
use husk_core::images::{Digest, ImageStore, ImportOptions, UnpackOptions};
use husk_tests::stats::Summary;
use husk_tests::{command, find_command, unique_id, Containerd, ImageBuilder};

const DEFAULT_ITERS: usize = 15;
const WARMUP: usize = 2;

fn main() -> ExitCode {
    let iters = match husk_tests::stats::bench_rounds(
        "image_import",
        "containerd, overlay whiteouts, ownership",
        DEFAULT_ITERS,
    ) {
        Ok(n) => n,
        Err(code) => return code,
    };

    let work = tempfile::Builder::new()
        .prefix("husk-bench-img-")
        .tempdir()
        .unwrap();
    let layout_dir = work.path().join("layout");
    let layout_tar = work.path().join("busybox.tar");
    let info = ImageBuilder::busybox().write_dir(&layout_dir);
    ImageBuilder::busybox().write_tar(&layout_tar);
    let layer_blob = layout_dir
        .join("blobs/sha256")
        .join(info.layers[0].digest.trim_start_matches("sha256:"));
    let diff_id = Digest::parse(&info.layers[0].diff_id).unwrap();
    println!(
        "image_import: busybox, one layer of {} bytes gzipped; {iters} iterations (+{WARMUP} warm-up), round-robin",
        info.layers[0].size
    );

    let containerd = find_command("containerd").map(|_| Containerd::start());
    let umoci = find_command("umoci");
    let mut names: Vec<&str> = vec!["husk (library)", "husk unpack only"];
    if containerd.is_some() {
        names.push("ctr image import");
    } else {
        eprintln!("image_import: containerd missing (scripts/install-deps.sh); left out");
    }
    if umoci.is_some() {
        names.push("umoci unpack");
    } else {
        eprintln!("image_import: umoci missing (apt-get install umoci); left out");
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];

    for round in 0..WARMUP + iters {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let t = match run_one(
                names[i],
                work.path(),
                &layout_tar,
                &layout_dir,
                &layer_blob,
                &diff_id,
                containerd.as_ref(),
                umoci.as_deref(),
            ) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("image_import: {} failed in round {round}: {e}", names[i]);
                    return ExitCode::FAILURE;
                }
            };
            if round >= WARMUP {
                samples[i].push(t);
            }
        }
    }

    println!();
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>4}",
        "contender", "median ms", "p10 ms", "p90 ms", "n"
    );
    let medians: Vec<f64> = names
        .iter()
        .zip(&samples)
        .map(|(n, s)| {
            let s = Summary::of(s).unwrap();
            println!(
                "{n:<20} {:>9.2} {:>9.2} {:>9.2} {:>4}",
                s.median, s.p10, s.p90, s.n
            );
            s.median
        })
        .collect();
    println!();
    for (j, peer) in names.iter().enumerate().skip(2) {
        println!(
            "husk (library) / {peer}: {:.2}   husk unpack only / {peer}: {:.2}",
            medians[0] / medians[j],
            medians[1] / medians[j]
        );
    }
    ExitCode::SUCCESS
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    name: &str,
    work: &Path,
    layout_tar: &Path,
    layout_dir: &Path,
    layer_blob: &Path,
    diff_id: &Digest,
    containerd: Option<&Containerd>,
    umoci: Option<&Path>,
) -> Result<Duration, String> {
    let id = unique_id("bench");
    match name {
        "husk (library)" => {
            let root = work.join(&id);
            let start = Instant::now();
            let store = ImageStore::open(&root).map_err(|e| e.to_string())?;
            store
                .import(
                    layout_tar,
                    &ImportOptions {
                        name: Some("busybox:latest".into()),
                        ..Default::default()
                    },
                )
                .map_err(|e| e.to_string())?;
            let t = start.elapsed();
            std::fs::remove_dir_all(&root).map_err(|e| e.to_string())?;
            Ok(t)
        }
        "husk unpack only" => {
            let root = work.join(&id);
            std::fs::create_dir_all(&root).unwrap();
            let start = Instant::now();
            let s = Snapshots::open(&root).map_err(|e| e.to_string())?;
            let f = std::fs::File::open(layer_blob).map_err(|e| e.to_string())?;
            s.create(
                diff_id,
                diff_id,
                None,
                f,
                "busybox",
                &UnpackOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            let t = start.elapsed();
            std::fs::remove_dir_all(&root).map_err(|e| e.to_string())?;
            Ok(t)
        }
        "ctr image import" => {
            let c = containerd.expect("containerd contender only when started");
            let base = format!("bench/{id}");
            let tar = layout_tar.to_string_lossy();
            let start = Instant::now();
            let out = c.ctr(&["image", "import", "--base-name", &base, &tar]);
            let t = start.elapsed();
            if !out.status.success() {
                return Err(command::format_output(&out));
            }
            // Remove it and its content and snapshots, so the next round
            // starts from nothing too.
            let out = c.ctr(&["image", "rm", "--sync", &format!("{base}:latest")]);
            if !out.status.success() {
                return Err(command::format_output(&out));
            }
            Ok(t)
        }
        "umoci unpack" => {
            let bundle = work.join(&id);
            let start = Instant::now();
            let out = command::output(
                Command::new(umoci.expect("umoci contender only when found"))
                    .args(["unpack", "--image"])
                    .arg(format!("{}:latest", layout_dir.display()))
                    .arg(&bundle),
            );
            let t = start.elapsed();
            if !out.status.success() {
                return Err(command::format_output(&out));
            }
            std::fs::remove_dir_all(&bundle).map_err(|e| e.to_string())?;
            Ok(t)
        }
        other => Err(format!("unknown contender {other}")),
    }
}
