#!/usr/bin/env bash
# The seed's bootstrap for the native layout: point the sentinels at redis-a, create testkey.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${HA_STACK_DIR:-./.ha-stack}
[ "${1:-}" = --dir ] && dir=$2
. "$dir/ports.env"
sentinel_cli() { local var="S$1"; redis-cli -p "${!var}" "${@:2}"; }
redis_cli() { local var="${1^^}"; redis-cli -p "${!var}" "${@:2}"; }
MASTER_HOST=127.0.0.1 MASTER_PORT=$A GATEWAY_URL=http://127.0.0.1:$GW
. "$here/../lib.sh"
bootstrap
