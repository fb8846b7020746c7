#!/usr/bin/env bash
# The seed's failover: freeze one instance (default redis-a) with DEBUG SLEEP 30.
set -euo pipefail
# The same file set as bootstrap.sh (TOLLGATE_SENTINEL=1 adds docker-compose.sentinel.yml); the
# stack is the project COMPOSE_PROJECT_NAME names, if set, as for docker compose itself.
here=$(cd "$(dirname "$0")" && pwd)
files=(-f "$here/docker-compose.yml")
[ "${TOLLGATE_SENTINEL:-0}" = 1 ] && files+=(-f "$here/docker-compose.sentinel.yml")
compose() { if docker compose version >/dev/null 2>&1; then docker compose "${files[@]}" "$@"; else docker-compose "${files[@]}" "$@"; fi; }
redis_cli() { compose exec -T "redis-$1" redis-cli "${@:2}"; }
. "$here/../lib.sh"
failover "${1:-a}"
