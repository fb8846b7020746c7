#!/usr/bin/env bash
# The seed's bootstrap: point the sentinels at redis-a and create `testkey`.
set -euo pipefail
# TOLLGATE_SENTINEL=1: the native Sentinel file set; COMPOSE_PROJECT_NAME, if set, names the stack.
here=$(cd "$(dirname "$0")" && pwd)
files=(-f "$here/docker-compose.yml")
[ "${TOLLGATE_SENTINEL:-0}" = 1 ] && files+=(-f "$here/docker-compose.sentinel.yml")
compose() { if docker compose version >/dev/null 2>&1; then docker compose "${files[@]}" "$@"; else docker-compose "${files[@]}" "$@"; fi; }
sentinel_cli() { compose exec -T "sentinel-$1" redis-cli -p 26379 "${@:2}"; }
redis_cli() { compose exec -T "redis-$1" redis-cli "${@:2}"; }
MASTER_HOST=redis-a MASTER_PORT=6379 GATEWAY_URL=${GATEWAY_URL:-http://localhost:8080}
. "$here/../lib.sh"
bootstrap
