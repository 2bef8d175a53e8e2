#!/usr/bin/env bash
# Builds {{name}}.wasm, the husk plugin in this directory ({{lang}}).
set -euo pipefail
cd "$(dirname "$0")"
OUT={{name}}.wasm

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build.sh: \`$1\` not found; run scripts/install-deps.sh from the husk repository (as root) first" >&2
        exit 1
    }
}

