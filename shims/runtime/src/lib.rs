//! husk's OCI runtime: turns an OCI bundle into an isolated,
//! resource-limited process straight from kernel primitives (namespaces,
//! cgroups, pivot_root, capabilities), with no runc underneath.
//!
//! One module per kernel or protocol concept. [`sys`] is the only module
//! that makes system calls directly; the planning logic elsewhere is
//! unit-tested without root.

// Mount flags are `c_ulong`: u64 here, u32 on 32-bit targets. The casts to
// u64 that clippy calls unnecessary on x86_64 are what keeps them portable.
#![allow(clippy::unnecessary_cast)]

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod console;
pub mod container;
pub mod devices;
pub mod error;
pub mod hardened;
pub mod hooks;
pub mod init;
pub mod landlock;
pub mod launch;
pub mod mounts;
pub mod namespaces;
pub mod paths;
pub mod process;
pub mod rootfs;
pub mod sealed_exe;
pub mod seccomp;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sys;

pub use container::{
    signal_start, start_through, started, CreateOptions, ExecOptions, InitExit, ProcessIo, Runtime,
    StartError, Started,
};
pub use error::{Error, Result};
