#!/usr/bin/env bash
# Builds every example plugin with its real toolchain, into
# examples/plugins/build/ (or $HUSK_PLUGINS_OUT). The plugin tests and
# benchmarks load them from there. Install the toolchains first with
# scripts/install-deps.sh.
#
#   scripts/build-plugins.sh            # everything
#   scripts/build-plugins.sh wat rust   # only these languages
#
# Languages: wat, rust, native, python, c, js. A language whose sources and
# the WIT are older than its outputs is skipped (Python takes ~45 s).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WIT=$ROOT/wit
SRC=$ROOT/examples/plugins
OUT=${HUSK_PLUGINS_OUT:-$SRC/build}
# Guest crates are their own workspaces; keep their builds out of the main
# target dir's lock.
GUEST_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/plugin-guests
mkdir -p "$OUT"

log() { printf '[build-plugins %(%H:%M:%S)T] %s\n' -1 "$*"; }
need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build-plugins.sh: \`$1\` not found; run scripts/install-deps.sh (as root) first" >&2
        exit 1
    }
}
# up_to_date OUTPUT INPUT...: true when OUTPUT exists and is newer than every input.
up_to_date() {
    local out=$1
    shift
    [[ -f $out ]] || return 1
    [[ -z $(find "$@" "$WIT" -newer "$out" -type f 2>/dev/null | head -1) ]]
}

build_wat() {
    need wasm-tools
    local tmp
    tmp=$(mktemp -d)
    for f in "$SRC"/wat/*.wat; do
        local n
        n=$(basename "$f" .wat)
        if up_to_date "$OUT/wat-$n.wasm" "$f"; then continue; fi
        wasm-tools component embed "$WIT" --world policy "$f" -o "$tmp/$n.core.wasm"
        wasm-tools component new "$tmp/$n.core.wasm" -o "$OUT/wat-$n.wasm"
        wasm-tools validate "$OUT/wat-$n.wasm"
    done
    # Fixtures for bad-input tests:
    # a core module (not a component),
    wasm-tools parse "$SRC/wat/allow.wat" -o "$OUT/fixture-core-module.wasm"
    # a component of another contract,
    wasm-tools component embed "$SRC/wat/fixtures/other-world.wit" --world runner \
        "$SRC/wat/fixtures/other-world.wat" -o "$tmp/other.core.wasm"
    wasm-tools component new "$tmp/other.core.wasm" -o "$OUT/fixture-other-world.wasm"
    # a plugin built against a future husk:plugin@0.2.0,
    mkdir -p "$tmp/wit2"
    for w in "$WIT"/*.wit; do sed 's/husk:plugin@0.1.0/husk:plugin@0.2.0/' "$w" >"$tmp/wit2/$(basename "$w")"; done
    sed 's/@0.1.0#/@0.2.0#/' "$SRC/wat/allow.wat" >"$tmp/allow2.wat"
    wasm-tools component embed "$tmp/wit2" --world policy "$tmp/allow2.wat" -o "$tmp/allow2.core.wasm"
    wasm-tools component new "$tmp/allow2.core.wasm" -o "$OUT/fixture-wrong-version.wasm"
    # and a file that is not wasm at all.
    printf 'not a plugin\n' >"$OUT/fixture-not-wasm.wasm"
    rm -rf "$tmp"
    log "wat: $(ls "$OUT"/wat-*.wasm | wc -l) plugins + fixtures"
}

rust_guest() { # CRATE_DIR OUTPUT_NAME
    local dir=$SRC/$1 name=$2
    if up_to_date "$OUT/$name.wasm" "$dir/src" "$dir/Cargo.toml"; then return; fi
    local crate
    crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1 | tr - _)
    CARGO_TARGET_DIR=$GUEST_TARGET cargo build --quiet --release --target wasm32-wasip2 \
        --manifest-path "$dir/Cargo.toml"
    cp "$GUEST_TARGET/wasm32-wasip2/release/$crate.wasm" "$OUT/$name.wasm"
}

build_rust() {
    need cargo
    rustup target list --installed | grep -qx wasm32-wasip2 || {
        echo "build-plugins.sh: rust target wasm32-wasip2 missing; run scripts/install-deps.sh" >&2
        exit 1
    }
    rust_guest rust-policy rust-policy
    rust_guest rust-probe rust-probe
    rust_guest rust-lifecycle rust-lifecycle
    log "rust: rust-policy, rust-probe, rust-lifecycle"
}

build_native() {
    need cargo
    local dir=$SRC/native-policy
    if up_to_date "$OUT/native-policy.so" "$dir/src" "$dir/Cargo.toml"; then return; fi
    CARGO_TARGET_DIR=$GUEST_TARGET cargo build --quiet --release --manifest-path "$dir/Cargo.toml"
    cp "$GUEST_TARGET/release/libhusk_policy_native.so" "$OUT/native-policy.so"
    log "native: native-policy.so"
}

build_python() {
    need componentize-py
    local dir=$SRC/python-policy
    if up_to_date "$OUT/python-policy.wasm" "$dir/app.py"; then return; fi
    (cd "$dir" && componentize-py -d "$WIT" -w policy componentize app -o "$OUT/python-policy.wasm" >/dev/null)
    log "python: python-policy"
}

build_c() {
    need wit-bindgen
    need clang
    need wasm-tools
    local dir=$SRC/c-policy
    if up_to_date "$OUT/c-policy.wasm" "$dir/policy.c"; then return; fi
    local tmp
    tmp=$(mktemp -d)
    wit-bindgen c "$WIT" --world policy --out-dir "$tmp" >/dev/null 2>&1
    # wasi-libc (Debian's wasi-libc) for malloc/string.h; the policy uses no
    # stdio, so the core module imports no WASI and needs no preview1 adapter.
    clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -I"$tmp" \
        "$dir/policy.c" "$tmp/policy.c" "$tmp/policy_component_type.o" -o "$tmp/policy.core.wasm"
    wasm-tools component new "$tmp/policy.core.wasm" -o "$OUT/c-policy.wasm"
    rm -rf "$tmp"
    log "c: c-policy"
}

build_js() {
    need node
    local dir=$SRC/js-policy
    if up_to_date "$OUT/js-policy.wasm" "$dir/policy.js" "$dir/package.json"; then return; fi
    (cd "$dir" && { [[ -x node_modules/.bin/componentize-qjs ]] || npm install --no-audit --no-fund --silent; } &&
        ./node_modules/.bin/componentize-qjs --wit "$WIT" --world policy --sync --stub-wasi \
            --js policy.js -o "$OUT/js-policy.wasm" >/dev/null)
    log "js: js-policy"
}

langs=("$@")
((${#langs[@]})) || langs=(wat rust native python c js)
for lang in "${langs[@]}"; do
    t0=$SECONDS
    "build_$lang"
    log "$lang done in $((SECONDS - t0)) s"
done
