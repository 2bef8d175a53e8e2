//! Writes the busybox image the tests use (the host's busybox-static, one
//! layer, an OCI layout tar) to the path given, for `husk image import`:
//!
//!     cargo run -p husk-tests --example busybox_image -- busybox.tar
//!
//! scripts/quickstart.sh uses it.

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: busybox_image OUT.tar");
        std::process::exit(2);
    };
    husk_tests::ImageBuilder::busybox().write_tar(std::path::Path::new(&out));
}
