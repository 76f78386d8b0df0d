#!/usr/bin/env bash
# Fetch the third-party peers for the interop tests. Idempotent: work already done is skipped.
#
#   go-libp2p: the p2pd daemon inside the PyPI wheel hivemind==1.1.12 -> interop/.bin/p2pd
#              (the wheel is downloaded with `pip download --no-deps`; hivemind is NOT installed)
#   js-libp2p: `npm ci` in interop/js from the committed package-lock.json -> interop/js/node_modules
#
# Needs: python with pip (the project venv when active), unzip or python's zipfile, node >= 20, npm.
# Network: PyPI and the npm registry only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$HERE/.bin"
HIVEMIND_VERSION="1.1.12"
# sha256 of hivemind/hivemind_cli/p2pd in hivemind-1.1.12-py3-none-manylinux2014_x86_64.whl
P2PD_SHA256="42f8f48e62583b97cdba3c31439c08029fb2b9fc506b5bdd82c46b7cc1d279d8"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { printf '[interop/setup] %s\n' "$*"; }

sha256_of() { "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# ---- go: p2pd from the hivemind wheel ----
if [[ -x "$BIN/p2pd" && "$(sha256_of "$BIN/p2pd")" == "$P2PD_SHA256" ]]; then
  log "p2pd present ($BIN/p2pd)"
else
  mkdir -p "$BIN"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "downloading hivemind==$HIVEMIND_VERSION (wheel only, not installed)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "hivemind==$HIVEMIND_VERSION" -d "$tmp"
  wheel="$(ls "$tmp"/hivemind-"$HIVEMIND_VERSION"-*.whl)"
  "$PYTHON" - "$wheel" "$tmp/p2pd" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("hivemind/hivemind_cli/p2pd") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  got="$(sha256_of "$tmp/p2pd")"
  if [[ "$got" != "$P2PD_SHA256" ]]; then
    log "p2pd checksum mismatch: got $got, expected $P2PD_SHA256" >&2
    exit 1
  fi
  chmod +x "$tmp/p2pd"
  mv "$tmp/p2pd" "$BIN/p2pd"
  log "p2pd installed ($BIN/p2pd)"
fi

# ---- js: node_modules from the committed lock file ----
command -v node >/dev/null 2>&1 || { log "node is not installed (need >= 20)" >&2; exit 1; }
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 20 )); then
  log "node $(node --version) is too old (need >= 20)" >&2
  exit 1
fi
stamp="$HERE/js/node_modules/.p2pshard-lock-sha256"
lock_sum="$(sha256_of "$HERE/js/package-lock.json")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" ]]; then
  log "js node_modules up to date with package-lock.json"
else
  log "npm ci (interop/js)"
  (cd "$HERE/js" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
  log "js peer installed"
fi
log "ready: pytest interop -q"
