//! Link flags for the shim binaries only (not the library, not the
//! workspace's other binaries).
//!
//! `-z pack-relative-relocs` (DT_RELR, binutils 2.38+, glibc 2.36+): the
//! position-independent executable's ~23 000 relative relocations take a
//! few kilobytes instead of ~550 KB of `.rela.dyn`, which the dynamic
//! loader reads at every start, so those pages stayed resident in every
//! long-lived shim.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
