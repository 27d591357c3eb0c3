#!/usr/bin/env bash
# Installs what the interop client scripts need, only when missing.
# Idempotent; a no-op (well under a second) when everything is in place.
# Env: PYTHON (default python3), NPM (default npm).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-python3}"
NPM="${NPM:-npm}"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

# Node packages: reinstall when absent or when package-lock.json changed since.
command -v node >/dev/null || die "node not found (need Node.js >= 18)"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' ||
  die "Node.js >= 18 needed (have $(node --version))"
if [ ! -f node_modules/@stomp/stompjs/package.json ] ||
  [ ! -f node_modules/ws/package.json ] ||
  [ ! -f node_modules/playwright-core/package.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  command -v "$NPM" >/dev/null || die "npm not found"
  echo "install.sh: npm ci in $(pwd)" >&2
  "$NPM" ci --no-audit --no-fund --loglevel=error >&2
fi

# Python packages: reinstall when one is absent or not its pinned version.
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
pinned() { # pinned PACKAGE: its version in requirements.txt
  sed -n "s/^$1==\([^ ;#]*\).*/\1/p" requirements.txt
}
installed() { # installed MODULE: its __version__, empty when it cannot be imported
  "$PYTHON" -c "import $1; print($1.__version__)" 2>/dev/null || true
}
want_stomp="$(pinned 'stomp\.py')"
want_ws="$(pinned websockets)"
[ -n "$want_stomp" ] || die "requirements.txt pins no stomp.py version"
[ -n "$want_ws" ] || die "requirements.txt pins no websockets version"
have_stomp="$(installed stomp)"
have_ws="$(installed websockets)"
if [ "$have_stomp" != "$want_stomp" ] || [ "$have_ws" != "$want_ws" ]; then
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip for $PYTHON not found"
  echo "install.sh: pip install -r requirements.txt" \
    "(stomp.py ${have_stomp:-missing} -> $want_stomp, websockets ${have_ws:-missing} -> $want_ws)" >&2
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
  if ! "$PYTHON" -m pip install -q -r requirements.txt >&2; then
    # Externally managed interpreter (PEP 668): fall back to the user site.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install -q --user -r requirements.txt >&2
  fi
  have_stomp="$(installed stomp)"
  have_ws="$(installed websockets)"
  [ "$have_stomp" = "$want_stomp" ] ||
    die "stomp.py $want_stomp not importable after install (have '${have_stomp:-none}')"
  [ "$have_ws" = "$want_ws" ] ||
    die "websockets $want_ws not importable after install (have '${have_ws:-none}')"
fi
