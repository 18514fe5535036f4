#!/usr/bin/env bash
# The test suite: style, lints, API docs, config validation, unit and integration tests
# (they start their own redis-server and FreeSWITCH simulator on loopback),
# and a real third-party ESL client against the simulator.
# Needs: a Rust toolchain, redis-server, redis-cli, docker-compose, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo doc --no-deps, warnings are errors"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "docker-compose config (no engine needed)"
docker-compose -f docker-compose.yml config -q

step "freeswitch-conf XML is well-formed"
python3 - <<'PY'
import glob, sys, xml.etree.ElementTree as ET
files = sorted(glob.glob("freeswitch-conf/**/*.xml", recursive=True))
for f in files:
    ET.parse(f)
print(f"{len(files)} files ok")
PY

step "a third-party ESL client (greenswitch) against the simulator"
bash ci/esl_client_check.sh

step "cargo test"
cargo test --all-targets
