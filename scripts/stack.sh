#!/usr/bin/env bash
# fleetwatch's local stack of real servers, without Docker: Mosquitto, InfluxDB 1.x, VictoriaMetrics and
# Elasticsearch 8.x on 127.0.0.1, with data and logs under $FLEETWATCH_STACK_DIR (default .stack/).
#
#   scripts/stack.sh up [server...]     install what is missing, start, wait until healthy
#   scripts/stack.sh down [server...]   stop
#   scripts/stack.sh status             one line per server
#   scripts/stack.sh restart SERVER     stop and start one server (outage tests use it)
#
# FLEETWATCH_INFLUXDB_GOGC sets influxd's Go GC target (Go's default, 100, unless set): BENCHMARKS.md run AA
# measured how much of InfluxDB's CPU goes to its garbage collector with it.
#
# Installing is idempotent: Debian packages are installed only when their binary is missing, and the
# Elasticsearch distribution is downloaded from Maven Central once and checked against its SHA-1.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${FLEETWATCH_STACK_DIR:-$REPO_DIR/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
RUN_DIR="$STACK_DIR/run"
LOG_DIR="$STACK_DIR/logs"
SECRETS_DIR="$STACK_DIR/secrets"

# The newest 8.x integ-test-zip on Maven Central that installs and runs on JDK 17 here.
ES_VERSION="${FLEETWATCH_ES_VERSION:-8.19.21}"
ES_MAVEN_URL="https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch"
ES_USER="fleetwatch-es"
ES_HOME="$STACK_DIR/elasticsearch/elasticsearch-$ES_VERSION"

ALL_SERVERS=(mosquitto influxdb victoriametrics elasticsearch)
HEALTH_TIMEOUT="${FLEETWATCH_STACK_TIMEOUT:-120}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || { tail -20 "$LOG_DIR/apt.log"; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >>"$LOG_DIR/apt.log" 2>&1 || { tail -20 "$LOG_DIR/apt.log"; die "apt-get install $* failed"; }
}

render() { # render TEMPLATE OUTPUT: fill in the stack and repository paths
  sed -e "s|@STACK_DIR@|$STACK_DIR|g" -e "s|@REPO_DIR@|$REPO_DIR|g" "$1" >"$2"
}

pid_of() { # the pid of a running server started by this script, or nothing
  local pidfile="$RUN_DIR/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

java_home() {
  local java
  java="$(readlink -f "$(command -v java)")" || die "elasticsearch: no java on PATH (JDK 17+ required)"
  dirname "$(dirname "$java")"
}

# --- install -----------------------------------------------------------------------------------------

install_mosquitto() {
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto mosquitto-clients
  command -v mosquitto_sub >/dev/null || apt_install mosquitto-clients
}
install_influxdb() { command -v influxd >/dev/null || apt_install influxdb; }
install_victoriametrics() { command -v victoria-metrics >/dev/null || apt_install victoria-metrics; }
install_elasticsearch() {
  [ -x "$ES_HOME/bin/elasticsearch" ] && return 0
  command -v unzip >/dev/null || apt_install unzip
  local dl="$STACK_DIR/downloads" zip="elasticsearch-$ES_VERSION.zip"
  mkdir -p "$dl" "$STACK_DIR/elasticsearch"
  if [ ! -f "$dl/$zip" ]; then
    log "downloading Elasticsearch $ES_VERSION from Maven Central"
    curl -fsSL --retry 3 -o "$dl/$zip.part" "$ES_MAVEN_URL/$ES_VERSION/$zip" || die "elasticsearch: download failed: $ES_MAVEN_URL/$ES_VERSION/$zip"
    local want got
    want="$(curl -fsSL --retry 3 "$ES_MAVEN_URL/$ES_VERSION/$zip.sha1" | cut -c1-40)"
    got="$(sha1sum "$dl/$zip.part" | cut -c1-40)"
    [ "$want" = "$got" ] || die "elasticsearch: SHA-1 mismatch for $zip (want $want, got $got)"
    mv "$dl/$zip.part" "$dl/$zip"
  fi
  rm -rf "$ES_HOME.part" && mkdir -p "$ES_HOME.part"
  unzip -q "$dl/$zip" -d "$ES_HOME.part"
  mv "$ES_HOME.part/elasticsearch-$ES_VERSION" "$ES_HOME" && rmdir "$ES_HOME.part"
}

# --- start -------------------------------------------------------------------------------------------

make_tls() { # a throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate
  local dir="$1"
  [ -s "$dir/client.crt" ] && return 0
  mkdir -p "$dir"
  command -v openssl >/dev/null || apt_install openssl
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fleetwatch test CA" \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=fleetwatch-client" -keyout client.key -out client.csr
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out client.crt
  ) >"$LOG_DIR/tls.log" 2>&1 || { tail -20 "$LOG_DIR/tls.log"; die "mosquitto: generating test certificates failed"; }
}

start_mosquitto() {
  mkdir -p "$STACK_DIR/mosquitto/data" "$SECRETS_DIR"
  local user
  for user in fleetwatch device; do
    [ -s "$SECRETS_DIR/mqtt-$user.password" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$SECRETS_DIR/mqtt-$user.password")
  done
  rm -f "$STACK_DIR/mosquitto/passwd"
  (umask 077; : >"$STACK_DIR/mosquitto/passwd")
  for user in fleetwatch device; do
    mosquitto_passwd -b "$STACK_DIR/mosquitto/passwd" "$user" "$(cat "$SECRETS_DIR/mqtt-$user.password")"
  done
  make_tls "$STACK_DIR/mosquitto/tls"
  render "$REPO_DIR/provisioning/mosquitto/mosquitto.conf" "$STACK_DIR/mosquitto/mosquitto.conf"
  if [ "$(id -u)" -eq 0 ]; then
    # Started as root, mosquitto drops to its own user; let that user own its files.
    chown -R mosquitto: "$STACK_DIR/mosquitto"
    touch "$LOG_DIR/mosquitto.log" && chown mosquitto: "$LOG_DIR/mosquitto.log"
  fi
  local bin; bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  nohup "$bin" -c "$STACK_DIR/mosquitto/mosquitto.conf" >>"$LOG_DIR/mosquitto.stdout" 2>&1 &
  echo $! >"$RUN_DIR/mosquitto.pid"
}

start_influxdb() {
  mkdir -p "$STACK_DIR/influxdb"
  render "$REPO_DIR/provisioning/influxdb/influxdb.conf" "$STACK_DIR/influxdb/influxdb.conf"
  GOGC="${FLEETWATCH_INFLUXDB_GOGC:-100}" nohup influxd -config "$STACK_DIR/influxdb/influxdb.conf" >>"$LOG_DIR/influxdb.log" 2>&1 &
  echo $! >"$RUN_DIR/influxdb.pid"
}

start_victoriametrics() {
  mkdir -p "$STACK_DIR/victoriametrics"
  # Flags live in provisioning/victoriametrics/flags, one per line.
  local flags=()
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    flags+=("$(printf '%s' "$line" | sed -e "s|@STACK_DIR@|$STACK_DIR|g")")
  done <"$REPO_DIR/provisioning/victoriametrics/flags"
  nohup victoria-metrics "${flags[@]}" >>"$LOG_DIR/victoriametrics.log" 2>&1 &
  echo $! >"$RUN_DIR/victoriametrics.pid"
}

start_elasticsearch() {
  # Elasticsearch refuses to run as root: it runs as a dedicated system user that owns its files.
  if [ "$(id -u)" -eq 0 ]; then
    id "$ES_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER"
  fi
  mkdir -p "$STACK_DIR/elasticsearch/data" "$LOG_DIR/elasticsearch"
  render "$REPO_DIR/provisioning/elasticsearch/elasticsearch.yml" "$ES_HOME/config/elasticsearch.yml"
  cp "$REPO_DIR/provisioning/elasticsearch/jvm.options.d/"*.options "$ES_HOME/config/jvm.options.d/"
  local jh; jh="$(java_home)"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R "$ES_USER": "$STACK_DIR/elasticsearch" "$LOG_DIR/elasticsearch"
    # The pid file is written by the server itself, so it lives in a folder its user owns.
    su -s /bin/bash "$ES_USER" -c "ES_JAVA_HOME='$jh' '$ES_HOME/bin/elasticsearch' -d -p '$STACK_DIR/elasticsearch/es.pid'" \
      >>"$LOG_DIR/elasticsearch.stdout" 2>&1 || true
  else
    ES_JAVA_HOME="$jh" "$ES_HOME/bin/elasticsearch" -d -p "$STACK_DIR/elasticsearch/es.pid" >>"$LOG_DIR/elasticsearch.stdout" 2>&1 || true
  fi
  if [ -f "$STACK_DIR/elasticsearch/es.pid" ]; then cp "$STACK_DIR/elasticsearch/es.pid" "$RUN_DIR/elasticsearch.pid"; fi
}

# --- InfluxDB users ---------------------------------------------------------------------------------

INFLUXDB_ADMIN="admin"

influxdb_query() { # influxdb_query STATEMENT_FILE [CREDENTIALS_FILE]: the HTTP status, then the body
  # The statement and the credentials travel in files (or pipes), never on a command line that ps shows.
  local out; out="$(mktemp "$RUN_DIR/influxdb-query.XXXXXX")"
  local args=(-s -o "$out" -w '%{http_code}' -XPOST http://127.0.0.1:8086/query --data-urlencode "q@$1")
  if [ -n "${2:-}" ]; then args=(-K "$2" "${args[@]}"); fi
  curl "${args[@]}" || true
  printf ' '
  cat "$out"
  rm -f "$out"
}

provision_influxdb() {
  # Authentication is on (provisioning/influxdb/influxdb.conf). InfluxDB 1.x accepts one statement without
  # credentials while it has no admin, the one creating the first admin; it then refuses every unauthenticated
  # query and write. The admin's password is generated on first start and kept in $SECRETS_DIR.
  local pwfile="$SECRETS_DIR/influxdb-$INFLUXDB_ADMIN.password"
  mkdir -p "$SECRETS_DIR"
  [ -s "$pwfile" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$pwfile")
  local password answer
  password="$(cat "$pwfile")"
  answer="$(influxdb_query <(printf 'SHOW USERS'))"
  case "$answer" in
    401*) ;;
    403*"create admin user first"*|200*)
      case "$answer" in 200*) log "influxdb: WARNING: the running server does not ask for credentials (started with an older configuration): scripts/stack.sh restart influxdb" ;; esac
      answer="$(influxdb_query <(printf "CREATE USER \"%s\" WITH PASSWORD '%s' WITH ALL PRIVILEGES" "$INFLUXDB_ADMIN" "$password"))"
      case "$answer" in 200*) log "influxdb: admin user \"$INFLUXDB_ADMIN\" set up (password in $pwfile)" ;; *) die "influxdb: creating the admin user failed: $answer" ;; esac
      ;;
    *) die "influxdb: unexpected answer to SHOW USERS without credentials: $answer" ;;
  esac
  answer="$(influxdb_query <(printf 'SHOW USERS') <(printf 'user = "%s:%s"\n' "$INFLUXDB_ADMIN" "$password"))"
  case "$answer" in
    200*) ;;
    *) die "influxdb: the admin password in $pwfile is refused ($answer). The users live in $STACK_DIR/influxdb/meta: put the password the server knows back in $pwfile, or stop InfluxDB and remove $STACK_DIR/influxdb to start over" ;;
  esac
}

# --- health ------------------------------------------------------------------------------------------

healthy_mosquitto() { mosquitto_sub -h 127.0.0.1 -p 1883 -t '$SYS/broker/version' -C 1 -W 2 >/dev/null 2>&1; }
healthy_influxdb() { curl -fs -o /dev/null http://127.0.0.1:8086/ping; }
healthy_victoriametrics() { curl -fs -o /dev/null http://127.0.0.1:8428/health; }
healthy_elasticsearch() { curl -fs -o /dev/null 'http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=2s'; }

log_of() {
  case "$1" in
    elasticsearch) echo "$LOG_DIR/elasticsearch/fleetwatch-local.log" ;;
    *) echo "$LOG_DIR/$1.log" ;;
  esac
}

show_log_tail() {
  local f
  for f in "$(log_of "$1")" "$LOG_DIR/$1.stdout"; do
    [ -s "$f" ] && { log "tail of $f:"; tail -n 30 "$f" >&2; }
  done
  return 0
}

wait_healthy() {
  local server="$1" deadline=$((SECONDS + HEALTH_TIMEOUT))
  until "healthy_$server"; do
    if [ -z "$(pid_of "$server")" ]; then
      log "$server exited during start-up"; show_log_tail "$server"; die "$server failed to start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$server not healthy after ${HEALTH_TIMEOUT}s"; show_log_tail "$server"; die "$server failed to start"
    fi
    sleep 0.5
  done
}

# --- commands ----------------------------------------------------------------------------------------

server_up() {
  local server="$1"
  if [ -n "$(pid_of "$server")" ] && "healthy_$server"; then
    log "$server already running"
    return 0
  fi
  "install_$server"
  log "starting $server"
  "start_$server"
}

server_down() {
  local server="$1" pid
  pid="$(pid_of "$server")"
  if [ -z "$pid" ]; then rm -f "$RUN_DIR/$server.pid"; return 0; fi
  log "stopping $server (pid $pid)"
  kill "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN_DIR/$server.pid"
}

select_servers() { if [ "$#" -eq 0 ]; then echo "${ALL_SERVERS[@]}"; else echo "$@"; fi; }

cmd_up() {
  local servers; read -r -a servers <<<"$(select_servers "$@")"
  local s
  for s in "${servers[@]}"; do server_up "$s"; done
  for s in "${servers[@]}"; do
    wait_healthy "$s"
    # Also when it was running already: a server started before auth was on gets its admin all the same.
    if [ "$s" = influxdb ]; then provision_influxdb; fi
    log "$s healthy"
  done
}

cmd_down() {
  local servers; read -r -a servers <<<"$(select_servers "$@")"
  local s
  for s in "${servers[@]}"; do server_down "$s"; done
}

cmd_status() {
  local s pid state rc=0
  for s in "${ALL_SERVERS[@]}"; do
    pid="$(pid_of "$s")"
    if [ -n "$pid" ] && "healthy_$s"; then state="healthy (pid $pid)"
    elif [ -n "$pid" ]; then state="running, not healthy (pid $pid)"; rc=1
    else state="stopped"; rc=1; fi
    printf '%-16s %s\n' "$s" "$state"
  done
  return $rc
}

mkdir -p "$RUN_DIR" "$LOG_DIR"
case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  restart) shift; cmd_down "$@"; cmd_up "$@" ;;
  *) echo "usage: $0 up|down|status|restart [mosquitto|influxdb|victoriametrics|elasticsearch ...]" >&2; exit 2 ;;
esac
