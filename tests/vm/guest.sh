#!/usr/bin/env bash
# Runs inside one VM of the lane (tests/vm/lane.py boots it with virtme-ng): doctor, demo, then the
# kernel-dependent tests (pytest -m kernel), each step's output and timing into OUT (a --rwdir shared
# with the host). The host's root filesystem is the guest's, read-only: only OUT and /tmp are written.
# pytest -v names each test as it starts: if the VM ends mid-run, the lane says which test was running.
# usage: guest.sh OUT [test files...]
set -uo pipefail
out=$1; shift
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# One program cache for every step: each program compiles once per kernel (bcc is 5-10x slower under TCG),
# and the tests' parallel tracers start warm instead of compiling side by side.
export TRACER_CACHE_DIR=/tmp/tracer-lane-cache TRACER_LANE_CACHE_DIR=/tmp/tracer-lane-cache
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/security || mount -t securityfs none /sys/kernel/security 2>/dev/null
step() {  # step NAME CMD...: stdout to OUT/NAME.out, stderr to OUT/NAME.err, status and seconds to OUT/steps
    local name=$1 t0 rc; shift
    t0=$EPOCHREALTIME
    "$@" >"$out/$name.out" 2>"$out/$name.err"
    rc=$?
    printf '%s %s %s\n' "$name" "$rc" "$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }")" >>"$out/steps"
    printf 'lane guest: %s exit %s\n' "$name" "$rc"
}
uname -r >"$out/release"
printf 'booted %s\n' "$(cut -d' ' -f1 /proc/uptime)" >"$out/steps"
step doctor .venv/bin/tracer doctor --json
step demo .venv/bin/tracer demo
[ $# -gt 0 ] || set -- tests  # the files to run; all of the kernel-dependent ones by default
step pytest .venv/bin/python -m pytest "$@" -m kernel -v -p no:cacheprovider --durations=20 \
    --junitxml="$out/junit.xml"
