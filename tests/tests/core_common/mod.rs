//! Shared by the `core_*` tests: the private huskd of
//! [`husk_tests::huskd`] (also used by the huskd benchmarks).
#![allow(unused_imports)]

pub use husk_tests::huskd::{alive, bin_dir, Huskd, IMAGE};
