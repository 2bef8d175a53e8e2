#!/bin/sh
# cargo runs rustc through this script for the workspace's own crates
# (.cargo/config.toml: build.rustc-workspace-wrapper); $1 is rustc.
#
# The two shim binaries, the `husk` CLI and the `husk-runtime` CLI are
# linked static-pie: glibc, libgcc and libseccomp inside the binary. A long-lived shim then maps no ld.so, libc,
# libm or libgcc_s of its own, and keeps resident only the parts of them
# it runs, next to its own code (about 0.5 MB less VmRSS per shim, bench
# shim_run); and the container's init, which is this binary executed
# again, starts without the dynamic loader. A CLI, executed for every
# command, starts without loading and relocating libc and libgcc_s (whose
# constructor alone runs a dozen CPUID instructions, each a trap to the
# hypervisor on a virtual machine): `husk --version` took 1.95 ms of CPU
# dynamic. None of them calls anything in glibc that needs dlopen (no NSS
# lookups: users and groups come from the container's /etc files).
#
# Every workspace crate is compiled with v0 symbol mangling: a generic
# instance's name then spells out its type arguments instead of a hash that
# changes with any edit nearby, so the shim's hot code list
# (shims/shim/layout/README.md) keeps matching across code changes.
#
# Why a wrapper: cargo has no stable per-binary rustflags, and
# `-C target-feature=+crt-static` in RUSTFLAGS would also reach the
# proc-macro crates, which cannot be linked statically.
rustc=$1
shift
case " $* " in
*" --crate-name containerd_shim_husk_v2 "* | *" --crate-name containerd_shim_husk_hardened_v2 "* | \
    *" --crate-name husk "*" --crate-type bin "* | *" --crate-name husk_runtime "*" --crate-type bin "*)
    exec "$rustc" "$@" -C target-feature=+crt-static -C symbol-mangling-version=v0
    ;;
esac
exec "$rustc" "$@" -C symbol-mangling-version=v0
