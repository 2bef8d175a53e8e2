#!/usr/bin/env bash
# Regenerates shims/shim/layout/hot.txt, the functions the long-lived shim
# daemon runs, which the link puts side by side at the start of the
# binary's code (shims/shim/build.rs; why and how: shims/shim/layout/README.md).
#
#   sudo scripts/shim-layout.sh        # needs tracefs, containerd 1.6, ctr
#
# 1. Builds the shim in release, as bench shim_run measures it, with its
#    link map (the binary is stripped; the map names its functions).
# 2. Puts a uprobe on every function of that binary (tracefs; a private
#    trace instance, removed at exit) and runs it through a private
#    containerd (tests/examples/shim_layout_profile.rs). Uprobes, not
#    valgrind: the workers must run natively (valgrind lacks open_tree and
#    other calls the runtime library makes), and the trace names the
#    process of each hit, so only the daemon's own are kept (not `start`'s
#    before the fork, not the workers').
# 3. Writes the functions of the binary that the daemon ran: first those
#    of the steady state bench shim_run measures (start, Create, Start,
#    State), then those of the rest of a container's life (Pids, Stats,
#    Exec, Pause, Resume, Kill, exit, Wait, Delete, Shutdown), each as a
#    glob of its mangled name without the hashes (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tracefs=/sys/kernel/tracing
[[ -w $tracefs/uprobe_events ]] || {
    echo "shim-layout: needs tracefs at $tracefs with uprobes, as root" >&2
    exit 2
}

# The binary bench shim_run measures, and its link map (shims/shim/build.rs
# has the linker write it): the release binary is stripped, the map names
# the section (the function) at each address. Profiling a build with other
# settings would see other hashes.
cargo build --release -q -p husk-shim
cargo build -q -p husk-tests --example shim_layout_profile
shim=$root/target/release/containerd-shim-husk-v2
map=$(ls -t target/release/build/husk-shim-*/out/containerd-shim-husk-v2.map | head -1)

work=$(mktemp -d /tmp/husk-shim-layout-XXXXXX)
group=husk_layout_$$
instance=$tracefs/instances/$group
reader=
# uprobe_events takes one definition per write (a line split between two
# writes is refused); appends, never truncates (that removes every probe).
write_lines() {
    python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
bad = 0
for line in sys.stdin:
    try:
        os.write(fd, line.encode())
    except OSError:
        bad += 1
if bad:
    print(f"shim-layout: {bad} uprobe_events lines refused", file=sys.stderr)
' "$tracefs/uprobe_events"
}
cleanup() {
    local status=$?
    [[ -n $reader ]] && kill "$reader" 2>/dev/null
    [[ -d $instance ]] && { echo 0 >"$instance/events/$group/enable" || true; rmdir "$instance" || true; }
    if [[ -f $work/probes ]]; then
        sed 's/^p:\([^ ]*\) .*/-:\1/' "$work/probes" | write_lines || true
    fi
    if ((status)); then echo "shim-layout: failed; see $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# One probe per function (per .text.NAME input section of the map) entry:
# its file offset in the executable segment. The probes are named after
# the section's line in the map.
python3 - "$shim" "$map" "$group" >"$work/probes" <<'PY'
import re, subprocess, sys
shim, map_, group = sys.argv[1:]
loads = []
for line in subprocess.run(["readelf", "-lW", shim], capture_output=True, text=True, check=True).stdout.splitlines():
    f = line.split()
    if f and f[0] == "LOAD" and "E" in f[6:-1]:
        loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
seen = set()
for n, line in enumerate(open(map_)):
    m = re.match(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S*:\(\.text\.(\S+)\)$", line)
    if not m or int(m.group(2), 16) == 0:
        continue
    addr = int(m.group(1), 16)
    for off, vaddr, size in loads:
        if vaddr <= addr < vaddr + size and addr not in seen:
            seen.add(addr)
            print(f"p:{group}/f{n} {shim}:{addr - vaddr + off:#x}")
PY
echo "shim-layout: $(wc -l <"$work/probes") probes"
write_lines <"$work/probes"
mkdir "$instance"
echo 65536 >"$instance/buffer_size_kb"
cat "$instance/trace_pipe" >"$work/trace" &
reader=$!
echo 1 >"$instance/events/$group/enable"

# Between the phases: note the daemon's pid and mark the trace.
between="sh -c 'echo \$0 >$work/daemon.pid && echo husk-layout-steady-done >$instance/trace_marker'"
timeout 300 target/debug/examples/shim_layout_profile "$root/target/release" "$between"
sleep 1
kill "$reader"
reader=

pid=$(cat "$work/daemon.pid")
python3 - "$work" "$pid" "$map" >shims/shim/layout/hot.txt <<'PY'
import re, sys
work, pid, map_ = sys.argv[1:]
# The probes are named after the line of the map that defined them.
names, text = {}, []
for n, line in enumerate(open(map_)):
    m = re.match(r"\s*[0-9a-f]+\s+[0-9a-f]+\s+[0-9a-f]+\s+\d+\s+\S*:\(\.text\.(\S+)\)$", line)
    if m:
        names[f"f{n}"] = m.group(1)
        text.append(m.group(1))

hit = re.compile(r"-(\d+)\s+\[\d+\].*?\s(f\d+):")

def glob(name):
    """A glob for the name without its hashes, which change with the
    build (see the README). Legacy Rust names (the workspace's crates)
    end in 17h<16 hex>E; v0 names (the prebuilt std) carry crate
    disambiguators Cs<base62>_ and back references B<base62>_ whose
    values move with them; LTO may add .llvm.<n>. C names stay exact."""
    name = re.sub(r"\.llvm\.\d+$", "", name)
    m = re.match(r"(_ZN.*)17h[0-9a-f]{16}E$", name)
    if m:
        return m.group(1) + "17h*"
    if name.startswith("_R"):
        # (A C or B inside an identifier may be starred too: the glob
        # still matches the name, only a little more loosely.)
        return re.sub(r"Cs[0-9A-Za-z]*_", "Cs*_", re.sub(r"B[0-9A-Za-z]*_", "B*_", name)) + "*"
    return name

# A legacy name does not say which instance of a generic function it is
# (<&T as Debug>::fmt has hundreds): a glob that would match instances the
# daemon never ran keeps the exact name (hash included, .llvm.<n> starred),
# which matches only until the hashes change.
family = {}
for n in text:
    family.setdefault(glob(n), set()).add(n)
ran = set()
for line in open(f"{work}/trace", errors="replace"):
    m = hit.search(line)
    if m and m.group(1) == pid:
        ran.add(names[m.group(2)])

def key(name):
    g = glob(name)
    if family[g] <= ran:
        return g
    return re.sub(r"\.llvm\.\d+$", "", name) + "*"

phases, phase, seen = [[], []], 0, set()
for line in open(f"{work}/trace", errors="replace"):
    if "husk-layout-steady-done" in line:
        phase = 1
        continue
    m = hit.search(line)
    if not m or m.group(1) != pid:
        continue
    k = key(names[m.group(2)])
    if k not in seen and re.fullmatch(r"[A-Za-z0-9_$.*]+", k):
        seen.add(k)
        phases[phase].append(k)
if not phases[0] or phase != 1:
    sys.exit(f"shim-layout: no steady-state hits of daemon {pid} (or no marker) in the trace")
print("# Generated by scripts/shim-layout.sh: the functions the shim daemon runs,")
print("# laid out first in the binary's code (shims/shim/build.rs). Do not edit.")
print("# Globs of mangled names without their hashes (exact where the glob would match")
print("# instances the daemon never ran), in first-run order; see README.md.")
for title, keys in zip(["steady state: start, Create, Start, State", "the rest of a container's life"], phases):
    print(f"# {title}: {len(keys)}")
    for k in keys:
        print(k)
PY
echo "shim-layout: $(grep -vc '^#' shims/shim/layout/hot.txt) functions listed; removing the probes (minutes: the kernel waits for a grace period for each)"
