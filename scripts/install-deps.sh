#!/usr/bin/env bash
# Installs everything husk's build, tests and CI use, on Debian 12 as root.
# Idempotent: packages already present are not fetched again, tools already
# installed are kept. Needs only rustup/cargo beforehand.
#
#   sudo scripts/install-deps.sh
set -euo pipefail

log() { printf '[install-deps %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root (it uses apt-get)" >&2
    exit 1
fi

# cargo/rustup live in ~/.cargo/bin, which a non-login shell may not have.
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
    echo "install-deps.sh: rustup and cargo must be installed first (https://rustup.rs)" >&2
    exit 1
fi

# Real components the integration tests drive, and build tools.
APT_PACKAGES=(
    containerd runc crun busybox-static umoci skopeo docker-registry hyperfine
    iproute2 libseccomp-dev pkg-config e2fsprogs procps util-linux
    ca-certificates curl git build-essential python3
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
else
    log "apt: all ${#APT_PACKAGES[@]} packages already installed"
fi

# Lint tools (a minimal rustup profile lacks them).
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^${component}"; then
        log "rustup: adding component $component"
        rustup component add "$component"
    fi
done

# Plugins (wasm components) are built for these targets.
for target in wasm32-wasip2 wasm32-unknown-unknown; do
    if ! rustup target list --installed | grep -qx "$target"; then
        log "rustup: adding target $target"
        rustup target add "$target"
    fi
done

# The test runner.
if ! command -v cargo-nextest >/dev/null 2>&1; then
    log "cargo: installing cargo-nextest (a few minutes)"
    cargo install cargo-nextest --locked
else
    log "cargo-nextest already installed: $(cargo nextest --version 2>/dev/null | head -1)"
fi

log "done"
