#!/usr/bin/env bash
# husk's quick start on a fresh Debian 12 machine (as root, with rustup/cargo):
# installs what husk needs, builds it, and runs a busybox container with
# husk-runtime, straight from namespaces, cgroups and pivot_root.
#
#   sudo scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release -p husk-runtime
runtime="$PWD/target/release/husk-runtime"

# A bundle: busybox-static as the rootfs, husk-runtime's default spec.
bundle=$(mktemp -d /tmp/husk-quickstart-XXXXXX)
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" \
    "$bundle/rootfs/tmp" "$bundle/rootfs/etc"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$bundle/rootfs/bin/$applet"
done
"$runtime" spec --bundle "$bundle"
# Not a terminal, and a command that shows what the container sees.
sed -i 's/"terminal": true/"terminal": false/' "$bundle/config.json"
show='echo hello from a husk container: hostname $(hostname), pid $$, network $(ls /sys/class/net), $(ls /proc | grep -c "^[0-9]") processes visible'
python3 - "$bundle/config.json" "$show" <<'PY'
import json, sys
path, script = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["process"]["args"] = ["sh", "-c", script]
json.dump(spec, open(path, "w"), indent=2)
PY

echo
echo "+ husk-runtime run --bundle $bundle quickstart-$$"
"$runtime" run --bundle "$bundle" "quickstart-$$"
