need cargo
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "build.sh: rust target wasm32-wasip2 missing; run scripts/install-deps.sh from the husk repository (or rustup target add wasm32-wasip2)" >&2
    exit 1
fi
# An explicit target dir (set CARGO_TARGET_DIR to share one between plugins).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --target wasm32-wasip2
cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/{{crate}}.wasm" "$OUT"
