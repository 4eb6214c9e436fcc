#!/usr/bin/env bash
# Installs the Node.js tools the tests use (Stoplight Prism, pinned in package.json and package-lock.json) into
# node_modules/, with Debian's nodejs and npm when node or npm is missing. Needs root (or sudo) only for those.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "node-deps: please install ${need[*]} (Node.js 18.20 or later) with your package manager" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "node-deps: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# npm ci installs exactly the lockfile; again only when the lockfile changed since the last install
if [ ! -x node_modules/.bin/prism ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "node-deps: npm ci (Stoplight Prism $(node -p 'require("./package.json").devDependencies["@stoplight/prism-cli"]'))"
  npm ci --no-audit --no-fund --loglevel=error
fi
