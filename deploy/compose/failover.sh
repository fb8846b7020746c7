#!/usr/bin/env bash
# The seed's failover: freeze one instance (default redis-a) with DEBUG SLEEP 30.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
compose() { if docker compose version >/dev/null 2>&1; then docker compose -f "$here/docker-compose.yml" "$@"; else docker-compose -f "$here/docker-compose.yml" "$@"; fi; }
redis_cli() { compose exec -T "redis-$1" redis-cli "${@:2}"; }
. "$here/../lib.sh"
failover "${1:-a}"
