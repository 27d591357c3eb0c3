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

# Python packages: reinstall when stomp.py is absent or not the pinned version.
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
want="$(sed -n 's/^stomp\.py==\([^ ;#]*\).*/\1/p' requirements.txt)"
[ -n "$want" ] || die "requirements.txt pins no stomp.py version"
have="$("$PYTHON" -c 'import stomp; print(stomp.__version__)' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip for $PYTHON not found"
  echo "install.sh: pip install -r requirements.txt (stomp.py ${have:-missing} -> $want)" >&2
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
  if ! "$PYTHON" -m pip install -q -r requirements.txt >&2; then
    # Externally managed interpreter (PEP 668): fall back to the user site.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install -q --user -r requirements.txt >&2
  fi
  have="$("$PYTHON" -c 'import stomp; print(stomp.__version__)' 2>/dev/null || true)"
  [ "$have" = "$want" ] || die "stomp.py $want not importable after install (have '${have:-none}')"
fi
