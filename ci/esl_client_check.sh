#!/usr/bin/env bash
# CI check, run after `cargo test`: a real third-party ESL client library
# (greenswitch, from PyPI) talks to the Redswitch FreeSWITCH simulator
# (`redswitch sim`) as if it were FreeSWITCH. See ci/esl_client_check.py
# for what is checked.
#
# Builds the binary, installs greenswitch into a throw-away venv, starts the
# simulator on a free loopback port, runs the checks, stops the simulator.
# The last line is always `esl client check: N passed, M failed`; the exit
# status is the check's (non-zero when anything failed or could not run).
#
# Usage: ci/esl_client_check.sh   (from anywhere; needs cargo, python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

work="$(mktemp -d)"
sim_pid=""
cleanup() {
    if [[ -n "$sim_pid" ]] && kill -0 "$sim_pid" 2>/dev/null; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Anything that goes wrong before the checks run still ends with the
# summary line CI looks for.
not_run() {
    echo "esl client check: $1" >&2
    echo "esl client check: 0 passed, 1 failed"
    exit 1
}

cargo build --quiet --bin redswitch || not_run "cargo build failed"

python3 -m venv "$work/venv" || not_run "cannot create a python venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check greenswitch \
    || not_run "pip install greenswitch failed"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target/debug/redswitch sim --esl-listen "127.0.0.1:$port" --password ClueCon \
    >"$work/sim.log" 2>&1 &
sim_pid=$!

# Wait until the event socket accepts (at most 30 s).
if ! python3 - "$port" "$sim_pid" <<'EOF'
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the simulator exited")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the simulator did not listen within 30 s")
EOF
then
    cat "$work/sim.log" >&2
    not_run "the simulator did not start"
fi

status=0
"$work/venv/bin/python" ci/esl_client_check.py 127.0.0.1 "$port" ClueCon \
    | tee "$work/check.out" || status=$?
if ! grep -q '^esl client check: [0-9]* passed, [0-9]* failed$' "$work/check.out"; then
    echo "--- simulator log ---" >&2
    cat "$work/sim.log" >&2
    not_run "the check crashed before finishing"
fi
if [[ $status -ne 0 ]]; then
    echo "--- simulator log ---" >&2
    cat "$work/sim.log" >&2
    # Keep the summary the last line.
    grep '^esl client check: ' "$work/check.out" | tail -n 1
fi
exit "$status"
