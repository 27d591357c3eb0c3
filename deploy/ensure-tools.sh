#!/usr/bin/env bash
# Installs what building or testing needs, only when it is missing.
#   deploy/ensure-tools.sh build   C toolchain, protobuf compiler
#   deploy/ensure-tools.sh test    build tools plus the test-only tools
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TANSU_VERSION=0.6.0
apt_updated=0
apt_install() {
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "error: need root (or sudo) to install: $*" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ "$apt_updated" -eq 0 ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

need_cmd() { # need_cmd COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

ensure_build() {
  command -v cargo >/dev/null || { echo "error: cargo not found (install Rust with rustup)" >&2; exit 1; }
  need_cmd cc build-essential
  need_cmd protoc protobuf-compiler
  # etcd-client's protos import protobuf's well-known types.
  [ -f /usr/include/google/protobuf/descriptor.proto ] || apt_install libprotobuf-dev
  # librdkafka is built with TLS (and SCRAM) on the system's OpenSSL.
  need_cmd pkg-config pkg-config
  [ -f /usr/include/openssl/ssl.h ] || apt_install libssl-dev
}

ensure_test() {
  ensure_build
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  # Interop tests drive real STOMP clients: @stomp/stompjs under Node, stomp.py.
  need_cmd node nodejs
  need_cmd npm npm
  need_cmd python3 python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  need_cmd etcd etcd-server
  need_cmd chromium chromium
  need_cmd curl curl
  # promtool checks the alert rules' and the Grafana dashboard's PromQL.
  need_cmd promtool prometheus
  # ss reads a socket's timers (the TCP keepalive test).
  need_cmd ss iproute2
  # The deploy-file test: YAML through PyYAML, unit files through systemd-analyze.
  python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml
  need_cmd systemd-analyze systemd
  crates/cli/tests/clients/install.sh
  # A real Kafka-protocol broker for the Kafka tests: memory:// storage needs dynostore,
  # the SASL tests' SQLite storage (SCRAM users are created before --authentication is
  # on) needs libsql. The marker tells a build with both from an older one.
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  local marker="$cargo_home/.tansu-$TANSU_VERSION-dynostore-libsql"
  if [ ! -f "$marker" ] || [ ! -x "$cargo_home/bin/tansu" ]; then
    echo "installing the Tansu broker (cargo install; takes a while once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --force --features dynostore,libsql
    touch "$marker"
  fi
}

case "${1:-}" in
  build) ensure_build ;;
  test) ensure_test ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
