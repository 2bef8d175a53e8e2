#!/usr/bin/env bash
# husk's test command: builds the workspace, runs every test with
# cargo-nextest as root, then checks that nothing leaked (cgroups, mounts,
# processes, temp dirs named husk). Exits non-zero if a test failed or
# something leaked.
#
#   sudo scripts/test.sh                # everything
#   sudo scripts/test.sh -E 'test(runc)'  # extra arguments go to nextest
#
# Needs what scripts/install-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: the integration tests create namespaces, cgroups and mounts and start" >&2
    echo "containerd: run as root (sudo scripts/test.sh)." >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo-nextest is missing: run scripts/install-deps.sh" >&2
    exit 1
fi

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
tmp="${TMPDIR:-/tmp}"

# Temp dirs named husk-* that exist now are not this run's leaks.
list_tempdirs() { find "$tmp" -mindepth 1 -maxdepth 1 -name 'husk-*' 2>/dev/null | sort; }
tempdirs_before="$(list_tempdirs)"

log "build: workspace (debug)"
cargo build --workspace
log "build: husk-runtime (release)"
cargo build --release -p husk-runtime

log "build: example plugins (scripts/build-plugins.sh)"
bash scripts/build-plugins.sh

log "test: cargo nextest run --workspace --no-fail-fast $*"
nextest_log="$(mktemp)"
trap 'rm -f "$nextest_log"' EXIT
set +e
cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$nextest_log"
test_status=${PIPESTATUS[0]}
set -e

# ---- leak check ------------------------------------------------------------
log "leak check"
leaks=()

while IFS= read -r d; do
    [[ -n $d ]] && leaks+=("cgroup:  $d")
done < <(find /sys/fs/cgroup -mindepth 1 -maxdepth 6 -type d -name '*husk*' 2>/dev/null)

while IFS= read -r m; do
    [[ -n $m ]] && leaks+=("mount:   $m")
done < <(grep husk /proc/self/mountinfo || true)

# husk's binaries, and containerd instances (and their shims) started by the
# test harness, whose temp dirs are named husk-containerd-*. Matched on the
# executable's name, so this script (whose path may contain "husk") is not.
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    name=${exe##*/}
    name=${name% (deleted)}
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    # A container init still waiting in the runtime's code is named husk-init.
    [[ $comm == husk-init ]] && name=husk-init
    case $name in
    husk-runtime | husk-init | memfd:husk-runtime | husk | huskd | containerd-shim-husk*)
        leaks+=("process: $pid $cmd") ;;
    containerd | containerd-shim-*)
        [[ $cmd == *husk-* ]] && leaks+=("process: $pid $cmd") ;;
    esac
done

while IFS= read -r d; do
    [[ -n $d ]] && ! grep -qxF "$d" <<<"$tempdirs_before" && leaks+=("tempdir: $d")
done < <(list_tempdirs)

if ((${#leaks[@]})); then
    echo "test.sh: LEAKED after the test run (${#leaks[@]}):" >&2
    printf '  %s\n' "${leaks[@]}" >&2
    leak_status=1
else
    log "leak check: nothing leaked"
    leak_status=0
fi

# Repeat nextest's closing summary last, so it is the run's final word.
grep -E '^ *Summary \[' "$nextest_log" | tail -1 || true
if ((test_status != 0)); then
    echo "test.sh: tests FAILED (nextest exit status $test_status)" >&2
    exit "$test_status"
fi
exit "$leak_status"
