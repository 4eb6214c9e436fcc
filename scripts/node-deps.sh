#!/usr/bin/env bash
# Installs the Node.js tools the tests use (Stoplight Prism, pinned in package.json and package-lock.json) into
# node_modules/, with the Node.js and npm scripts/system-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "node-deps: Node.js and npm are missing: run scripts/system-deps.sh (Node.js 18.20 or later)" >&2
  exit 1
fi
# npm ci installs exactly the lockfile; again only when the lockfile changed since the last install
if [ ! -x node_modules/.bin/prism ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "node-deps: npm ci (Stoplight Prism $(node -p 'require("./package.json").devDependencies["@stoplight/prism-cli"]'))"
  npm ci --no-audit --no-fund --loglevel=error
fi
