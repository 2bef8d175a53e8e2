#!/usr/bin/env bash
# husk's quick start on a fresh Debian 12 machine (as root, with rustup/cargo):
# installs what husk needs, builds it, starts a private huskd, installs the
# example security policy (a WebAssembly component written in Rust) and runs
# busybox containers under it: one it allows (and edits: CAP_NET_RAW is
# dropped) and one it denies (a secret in the environment).
#
#   sudo scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "+ building huskd, husk, the shims and husk-plugin (release)"
cargo build --release -q -p husk-core -p husk-shim -p husk-plugins
scripts/build-plugins.sh rust
bin=$PWD/target/release

work=$(mktemp -d /tmp/husk-quickstart-XXXXXX)
# A private plugin service too: the shims inherit this from huskd.
export HUSK_PLUGIND_SOCKET=$work/plugind.sock
huskd_pid=
cleanup() {
    [[ -n $huskd_pid ]] && kill "$huskd_pid" 2>/dev/null && wait "$huskd_pid" 2>/dev/null
    # The plugin service the shims started for this private huskd (it would
    # otherwise idle for 5 minutes before it exits).
    pkill -f -- "--socket $HUSK_PLUGIND_SOCKET" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo run --release -q -p husk-tests --example busybox_image -- "$work/busybox.tar"

export HUSK_SOCKET=$work/huskd.sock
"$bin/huskd" --root "$work/root" --state "$work/run" >"$work/huskd.log" 2>&1 &
huskd_pid=$!
for _ in $(seq 100); do [[ -S $HUSK_SOCKET ]] && break; sleep 0.05; done

husk() {
    echo "+ husk $*" >&2
    "$bin/husk" "$@"
}
husk image import "$work/busybox.tar" --name quickstart/busybox:latest
husk plugin install examples/plugins/build/rust-policy.wasm --name security
husk plugin ls
echo
show='echo hello from a husk container: hostname $(hostname), pid $$, $(ls /proc | grep -c "^[0-9]") processes visible, CapBnd $(grep CapBnd /proc/1/status | cut -f2)'
husk run --rm quickstart/busybox sh -c "$show"
echo
if husk run --rm -e API_TOKEN=hunter2 quickstart/busybox true; then
    echo "quickstart: the policy should have denied that container" >&2
    exit 1
fi
echo "(denied by the policy plugin, as intended)"
