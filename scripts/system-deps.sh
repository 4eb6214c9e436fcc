#!/usr/bin/env bash
# Installs the Debian packages the local BI proxy, the BI clients the tests drive (psql, unixODBC's isql with
# psqlODBC; psql is also the benchmarks' baseline), the dashboard's browser test and the OpenAPI mock server
# (Node.js, for scripts/node-deps.sh) need, when missing.
# Needs root (or sudo); on a machine without apt-get it says what to install instead.
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || need+=(libnginx-mod-stream)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v isql >/dev/null 2>&1 || need+=(unixodbc)
odbcinst -q -d -n "PostgreSQL Unicode" >/dev/null 2>&1 || need+=(odbc-postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v soffice >/dev/null 2>&1 || need+=(libreoffice-calc-nogui)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: please install ${need[*]} with your package manager" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system-deps: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
