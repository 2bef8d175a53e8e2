//! husk-tests: the helpers that husk's integration tests and benchmarks share.
//!
//! Everything here drives *real* components: the kernel, Debian's
//! busybox-static, runc, crun, containerd 1.6 and husk's own binaries. Nothing
//! is mocked. The helpers are written for test code, so they panic with a
//! message that says what failed and how to fix it (usually: run
//! `scripts/install-deps.sh`, build the workspace, or run as root) instead of
//! returning errors that every test would have to unwrap.
//!
//! Tests run in parallel (cargo-nextest runs each test in its own process), so
//! every name that reaches the host (container ids, temp dirs, cgroups) is made
//! unique with [`unique_id`] or a `husk-` prefixed temp dir, and every helper
//! that starts or creates something undoes it in `Drop`. The `husk-` prefix is
//! what `scripts/test.sh` looks for when it checks for leaks.
//!
//! | module | concept |
//! | --- | --- |
//! | [`busybox`] | a busybox rootfs built from the host's `/bin/busybox` |
//! | [`bundle`] | an OCI runtime bundle (`config.json` + `rootfs/`) in a temp dir |
//! | [`image`] | an OCI image layout (dir or tar) written by hand |
//! | [`containerd`] | a private containerd 1.6 instance, started and stopped by PID |
//! | [`cri`] | a Kubernetes CRI client on containerd's socket, pod and container configs |
//! | [`runtime_bin`] | locating `husk-runtime` and driving any runc-compatible CLI |
//! | [`leaks`] | cgroups, mounts and processes left behind |
//! | [`plugin_config`] | the example plugins in a `plugins.toml` |
//! | [`plugind`] | the plugin service: a socket per instance, stopped with it |
//! | [`command`] | running commands with timeouts and readable failures |
//! | [`host`] | root checks, `SKIP:` messages, finding host tools |
//! | [`http_poll`] | an HTTP poller inside a network namespace |
//! | [`huskd`] | a private huskd and the `husk` CLI against it |
//! | [`ids`] | unique container ids |
//! | [`stats`] | median / percentiles for benchmarks |

pub mod bundle;
pub mod busybox;
pub mod command;
pub mod containerd;
pub mod cri;
pub mod host;
pub mod http_poll;
pub mod huskd;
pub mod ids;
pub mod image;
pub mod leaks;
pub mod plugin_config;
pub mod plugind;
pub mod runtime_bin;
pub mod stats;

pub use bundle::Bundle;
pub use containerd::{Containerd, ContainerdOptions};
pub use host::{find_command, is_root, require_command};
pub use ids::unique_id;
pub use image::{ImageBuilder, ImageLayout};
pub use runtime_bin::{husk_runtime_bin, HuskRuntime};
