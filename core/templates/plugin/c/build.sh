need wit-bindgen
need clang
need wasm-tools
# The bindings (gen/policy.h is what policy.c includes).
rm -rf gen
wit-bindgen c wit --world policy --out-dir gen >/dev/null
# wasi-libc for malloc and string.h. No stdio: it would import WASI preview 1,
# which then needs a preview-1 adapter.
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -Igen \
    policy.c gen/policy.c gen/policy_component_type.o -o gen/{{name}}.core.wasm
wasm-tools component new gen/{{name}}.core.wasm -o "$OUT"
