#!/usr/bin/env bash
# The development virtualenv (make venv): fleetwatch's wheel, built from this checkout and installed NOT editable,
# with the dev extras. What users install (`pip install .`, the Docker image) is what the tests run.
#
#   scripts/install.sh          create .venv if needed; install the dependencies when pyproject.toml changed;
#                               rebuild and reinstall the wheel when any packaged file changed
#   scripts/install.sh wheel    only build the wheel into dist/ and print its path
#
# Environment: PYTHON (default python3), VENV (default .venv), DIST (default dist).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DIST=${DIST:-dist}
BIN="$VENV/bin"
# Every file the wheel is built from (the Grafana provisioning files through the link dashboards/provisioning).
SOURCES=(fleetwatch collectors flows dashboards provisioning/grafana)

log() { printf '%s\n' "install: $*" >&2; }

# A hash of the packaged sources: names and contents, so an added, removed or renamed file counts too.
sources_hash() {
  {
    find "${SOURCES[@]}" -name __pycache__ -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    find "${SOURCES[@]}" -type l -printf '%p -> %l\n' | LC_ALL=C sort
    sha256sum pyproject.toml setup.py README.md
  } | sha256sum | cut -d' ' -f1
}

build_wheel() {
  local builder="$1"
  # setuptools keeps build/lib between builds: a module deleted from the tree would stay in the next wheel.
  rm -rf build "$DIST"/fleetwatch-*.whl
  "$builder" -m pip wheel -q --no-deps --wheel-dir "$DIST" . >&2
  rm -rf build
  local wheels=("$DIST"/fleetwatch-*.whl)
  [ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || { log "expected one wheel in $DIST, got: ${wheels[*]}"; exit 1; }
  realpath "${wheels[0]}"
}

if [ "${1:-}" = wheel ]; then
  if [ -x "$BIN/python" ]; then build_wheel "$BIN/python"; else build_wheel "$PYTHON"; fi
  exit 0
fi

if [ ! -x "$BIN/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$BIN/pip" install -q --upgrade pip
fi

deps_hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
src_hash=$(sources_hash)
[ "$(cat "$VENV/.deps-hash" 2>/dev/null)" = "$deps_hash" ] && deps_ok=1 || deps_ok=0
[ "$(cat "$VENV/.wheel-hash" 2>/dev/null)" = "$src_hash" ] && wheel_ok=1 || wheel_ok=0
if [ "$deps_ok" = 1 ] && [ "$wheel_ok" = 1 ]; then
  exit 0
fi

log "building the wheel"
wheel=$(build_wheel "$BIN/python")
if [ "$deps_ok" = 0 ]; then
  log "installing the dependencies (pyproject.toml changed)"
  # grafana-client's HTTP library (niquests) brings urllib3-future, whose wheel replaces urllib3 for the whole
  # environment (elasticsearch and influxdb-client included) through a .pth hook. Built from source with
  # URLLIB3_NO_OVERRIDE it installs beside urllib3 instead.
  URLLIB3_NO_OVERRIDE=1 "$BIN/pip" install -q --no-binary urllib3-future "$wheel[dev]"
fi
# The same version number is already installed (or an editable install of it): replace it with this wheel.
log "installing $wheel"
"$BIN/pip" install -q --force-reinstall --no-deps "$wheel"
rm -f "$VENV/.installed"
printf '%s\n' "$deps_hash" >"$VENV/.deps-hash"
printf '%s\n' "$src_hash" >"$VENV/.wheel-hash"
