#!/usr/bin/env bash
# A whole cluster on loopback: etcd, a Kafka-protocol broker (Tansu, in-memory), three
# pushcenter nodes and a registry. Prints the URLs, stops everything on Ctrl-C (or
# SIGTERM). `make cluster` builds the binary and runs this.
#
# Environment (all optional):
#   PUSHCENTER_BIN  the pushcenter binary (default: target/release/pushcenter)
#   TANSU           the tansu binary (default: tansu on PATH, else ~/.cargo/bin/tansu)
#   ETCD            the etcd binary (default: etcd on PATH)
#   BASE_PORT       first port (default 18000): etcd +0/+1, broker +2, registry +10,
#                   nodes +11..+13 (HTTP/WebSocket) and +21..+23 (STOMP over TCP)
#   CLUSTER_DIR     where logs and etcd data go (default: a fresh temp directory)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PUSHCENTER_BIN:-target/release/pushcenter}
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
ETCD=${ETCD:-$(command -v etcd || true)}
BASE=${BASE_PORT:-18000}
DIR=${CLUSTER_DIR:-$(mktemp -d -t pushcenter-cluster.XXXXXX)}
mkdir -p "$DIR"

for tool in "$BIN" "$TANSU" "$ETCD"; do
  if [ -z "$tool" ] || [ ! -x "$tool" ]; then
    echo "missing ${tool:-etcd}: run 'make cluster' (it installs and builds what is needed)" >&2
    exit 1
  fi
done

ETCD_URL="http://127.0.0.1:$BASE"
BROKER="127.0.0.1:$((BASE + 2))"
REGISTRY="127.0.0.1:$((BASE + 10))"
PIDS=()

stop() { # exit code
  trap - INT TERM EXIT
  echo "stopping..."
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; logs in $DIR"
  exit "$1"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

wait_http() { # url, what
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not come up ($1); see $DIR" >&2
  exit 1
}

wait_port() { # host:port, what
  for _ in $(seq 1 150); do
    if (echo >"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not listen on $1; see $DIR" >&2
  exit 1
}

"$ETCD" --name local --data-dir "$DIR/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-cluster "local=http://127.0.0.1:$((BASE + 1))" \
  >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)
wait_http "$ETCD_URL/health" etcd

RUST_LOG=warn "$TANSU" broker --listener-url "tcp://$BROKER" \
  --advertised-listener-url "tcp://$BROKER" --storage-engine memory://tansu/ \
  >"$DIR/broker.log" 2>&1 &
PIDS+=($!)
wait_port "$BROKER" broker

for i in 1 2 3; do
  http="127.0.0.1:$((BASE + 10 + i))"
  tcp="127.0.0.1:$((BASE + 20 + i))"
  # Tansu answers a fetch only when its wait ends: 5 ms, not the node's 100.
  PUSHCENTER_KAFKA_CONSUMER_FETCH_WAIT_MAX_MS=5 \
    "$BIN" node --node-id "n$i" --http-addr "$http" --tcp-addr "$tcp" \
    --kafka-brokers "$BROKER" --etcd-endpoints "$ETCD_URL" \
    >"$DIR/n$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_http "http://127.0.0.1:$((BASE + 10 + i))/readyz" "node n$i"; done

"$BIN" registry --http-addr "$REGISTRY" --etcd-endpoints "$ETCD_URL" >"$DIR/registry.log" 2>&1 &
PIDS+=($!)
wait_http "http://$REGISTRY/healthz" registry

cat <<EOF
pushcenter cluster up (logs in $DIR)
  dashboard   http://$REGISTRY/
  discovery   http://$REGISTRY/v1/connect
  nodes       http://127.0.0.1:$((BASE + 11))  http://127.0.0.1:$((BASE + 12))  http://127.0.0.1:$((BASE + 13))   (demo page at /)
  websocket   ws://127.0.0.1:$((BASE + 11))/ws ...
  stomp/tcp   127.0.0.1:$((BASE + 21)) ...
  kafka       $BROKER   (topic pushcenter.messages)
  etcd        $ETCD_URL
publish:  curl -s -XPOST http://127.0.0.1:$((BASE + 11))/v1/publish -H 'content-type: application/json' -d '{"destination":"/topic/demo","body":"hi"}'
Ctrl-C stops everything.
EOF

# Until a signal, or until one of the processes dies.
wait -n "${PIDS[@]}" || true
echo "a process of the cluster exited; see $DIR" >&2
exit 1
