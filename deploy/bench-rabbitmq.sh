#!/usr/bin/env bash
# RabbitMQ Web-STOMP on loopback, for `pushcenter bench` comparisons only (not for CI or
# tests). Installs Debian's rabbitmq-server, enables rabbitmq_web_stomp
# (ws://127.0.0.1:15674/ws, guest/guest, vhost "/"), starts it with a raised open-files
# limit (with the default 1,024 it stalls near 1,000 connections), waits until it is
# up and prints the beam.smp PID for `--server-pid`.
#
#   sudo deploy/bench-rabbitmq.sh          install if needed, start, print the PID
#   sudo deploy/bench-rabbitmq.sh stop     stop it
#
# Needs root. Works without systemd: the server runs as the rabbitmq user under
# `ulimit -n $NOFILE` (default: the hard limit).
set -euo pipefail

NOFILE=${NOFILE:-$(ulimit -Hn)}

pid() {
    pgrep -u rabbitmq -f 'beam.smp.*rabbit' | head -n1
}

if [ "${1:-start}" = stop ]; then
    rabbitmqctl stop >/dev/null 2>&1 || true
    p=$(pid || true)
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
fi

# Loopback only.
cat >/etc/rabbitmq/rabbitmq.conf <<'EOF'
listeners.tcp.1 = 127.0.0.1:5672
stomp.listeners.tcp.1 = 127.0.0.1:61613
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15674
EOF
for line in 'NODE_IP_ADDRESS=127.0.0.1' \
    'SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"'; do
    grep -qxF "$line" /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null ||
        echo "$line" >>/etc/rabbitmq/rabbitmq-env.conf
done
export ERL_EPMD_ADDRESS=127.0.0.1

rabbitmq-plugins --offline enable rabbitmq_web_stomp >/dev/null

if [ -z "$(pid || true)" ]; then
    # A service started by the package runs with the default limit: stop it first.
    rabbitmqctl stop >/dev/null 2>&1 || true
    mkdir -p /var/log/rabbitmq && chown rabbitmq:rabbitmq /var/log/rabbitmq
    su rabbitmq -s /bin/sh -c "ulimit -n $NOFILE && cd /var/lib/rabbitmq && \
        export ERL_EPMD_ADDRESS=127.0.0.1 && \
        nohup /usr/lib/rabbitmq/bin/rabbitmq-server \
        >/var/log/rabbitmq/startup_log 2>/var/log/rabbitmq/startup_err &"
fi

# Ready when the node answers and Web-STOMP accepts TCP.
i=0
until rabbitmqctl await_startup >/dev/null 2>&1 &&
    (exec 3<>/dev/tcp/127.0.0.1/15674) 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then
        echo "rabbitmq did not start; see /var/log/rabbitmq/" >&2
        exit 1
    fi
    sleep 1
done

p=$(pid)
echo "beam pid=$p nofile=$(awk '/Max open files/ {print $4}' "/proc/$p/limits")"
