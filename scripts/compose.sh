#!/usr/bin/env bash
# The docker compose v2 plugin, built by the project itself: the machines fleetwatch is developed on have
# the docker CLI without its compose plugin, and reach the Go module proxy but not GitHub releases.
#
#   scripts/compose.sh install        build github.com/docker/compose/v2 (pinned) into .stack/bin, and link it
#                                     into your docker CLI's plugin folder unless a docker-compose is there
#   scripts/compose.sh path           print the binary's path (installing it first if missing)
#   scripts/compose.sh ARGS...        `docker compose ARGS...` (installs the plugin first)
#
# Your docker configuration is yours: DOCKER_CONFIG is neither set nor replaced, and config.json is never
# written. The plugin goes into the folder the docker CLI searches first, ${DOCKER_CONFIG:-~/.docker}/cli-plugins,
# as a link to .stack/bin/docker-compose, and only when no docker-compose is there yet (one you installed
# yourself is left alone). `scripts/compose.sh ARGS...` runs the project's binary directly (compose's standalone
# mode, which reads the same configuration, contexts and DOCKER_HOST as the docker CLI), so it uses the pinned
# version whatever plugin your docker CLI has. Installing is idempotent: nothing is built when the binary at
# .stack/bin already reports the pinned version.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${FLEETWATCH_STACK_DIR:-$REPO_DIR/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
LOG_DIR="$STACK_DIR/logs"

# The last release of the v2 module path (later releases moved to github.com/docker/compose/v5); its
# go.mod asks for Go 1.24.9 and it builds with Go 1.26. `go install github.com/docker/compose/v2/cmd@v2.40.3`
# is refused ("The go.mod file for the module providing named packages contains one or more exclude
# directives"), so the module is fetched from the module proxy with `go mod download` (checked against
# sum.golang.org like any dependency) and built as the main module, where its excludes apply as upstream
# intends. v2.28.1 is the newest release `go install module@version` accepts as is, but it is over a year older.
COMPOSE_VERSION="${FLEETWATCH_COMPOSE_VERSION:-v2.40.3}"
COMPOSE_MODULE="github.com/docker/compose/v2"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

BIN_DIR="$STACK_DIR/bin"
COMPOSE_BIN="$BIN_DIR/docker-compose"
# Where the docker CLI looks for plugins first: the user's own folder, read, never redirected.
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
PLUGIN_LINK="$PLUGIN_DIR/docker-compose"

log() { printf '[compose] %s\n' "$*" >&2; }
die() { printf '[compose] ERROR: %s\n' "$*" >&2; exit 1; }

run_logged() { # run_logged LOGFILE CMD...: on failure print the exact command and the log's tail
  local logfile="$1"; shift
  if ! "$@" >>"$logfile" 2>&1; then
    tail -n 30 "$logfile" >&2
    die "command failed: $(printf '%q ' "$@")(log: $logfile)"
  fi
}

installed_version() { # the version the binary reports, or nothing
  [ -x "$COMPOSE_BIN" ] || return 0
  "$COMPOSE_BIN" version --short 2>/dev/null || true
}

link_plugin() {
  # The docker CLI finds plugins by file name in cli-plugins; a symlink keeps one copy of the binary. A
  # docker-compose that is not this link (the user's own) stays as it is.
  if [ -L "$PLUGIN_LINK" ] && [ "$(readlink "$PLUGIN_LINK")" = "$COMPOSE_BIN" ]; then
    return 0
  fi
  if [ -e "$PLUGIN_LINK" ] || [ -L "$PLUGIN_LINK" ]; then
    log "keeping your $PLUGIN_LINK; scripts/compose.sh runs $COMPOSE_BIN itself"
    return 0
  fi
  mkdir -p "$PLUGIN_DIR"
  ln -s "$COMPOSE_BIN" "$PLUGIN_LINK"
  log "linked $PLUGIN_LINK -> $COMPOSE_BIN (\`docker compose\` works without this script too)"
}

cmd_install() {
  local want="${COMPOSE_VERSION#v}"
  if [ "$(installed_version)" = "$want" ]; then
    link_plugin
    log "docker compose $COMPOSE_VERSION already installed ($COMPOSE_BIN)"
    return 0
  fi
  [ -x "$GO" ] || die "no Go toolchain (looked for go on PATH and /usr/local/go/bin/go); Go >= 1.24 is needed"
  mkdir -p "$BIN_DIR" "$LOG_DIR"
  local logfile="$LOG_DIR/compose-build.log"
  : >"$logfile"
  log "building docker compose $COMPOSE_VERSION with $("$GO" version | cut -d' ' -f3) (log: $logfile)"
  local start=$SECONDS
  # Module and build caches stay under .stack so the build touches nothing outside the repository.
  # GOTOOLCHAIN=local: never download another Go toolchain behind the user's back.
  local goenv=(env GOPATH="$STACK_DIR/go" GOMODCACHE="$STACK_DIR/go/pkg/mod" GOCACHE="$STACK_DIR/go/cache"
    GOFLAGS=-modcacherw GOTOOLCHAIN=local CGO_ENABLED=0 GO111MODULE=on)
  run_logged "$logfile" "${goenv[@]}" "$GO" mod download "$COMPOSE_MODULE@$COMPOSE_VERSION"
  local src
  src="$("${goenv[@]}" "$GO" mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [ -f "$src/go.mod" ] || die "command failed: go mod download -json $COMPOSE_MODULE@$COMPOSE_VERSION (no module directory)"
  # The flags of compose's own Makefile (`make build`), so `docker compose version` reports the release.
  (cd "$src" && run_logged "$logfile" "${goenv[@]}" "$GO" build -trimpath -tags e2e \
    -ldflags "-w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" -o "$COMPOSE_BIN.part" ./cmd)
  mv -f "$COMPOSE_BIN.part" "$COMPOSE_BIN"
  link_plugin
  log "built $COMPOSE_BIN in $((SECONDS - start))s: $("$COMPOSE_BIN" version)"
}

ensure_installed() {
  if [ "$(installed_version)" != "${COMPOSE_VERSION#v}" ]; then cmd_install; else link_plugin; fi
}

case "${1:-}" in
  install) cmd_install ;;
  path) ensure_installed; echo "$COMPOSE_BIN" ;;
  ''|-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  *)
    ensure_installed
    cd "$REPO_DIR"
    # Standalone mode: the same as `docker compose ARGS...`, with the pinned version.
    exec "$COMPOSE_BIN" "$@"
    ;;
esac
