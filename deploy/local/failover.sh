#!/usr/bin/env bash
# The seed's failover for the native layout: failover.sh [a|b|c] [--dir DIR].
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${HA_STACK_DIR:-./.ha-stack}
which=a
while [ $# -gt 0 ]; do
  case "$1" in --dir) dir=$2; shift 2 ;; *) which=$1; shift ;; esac
done
. "$dir/ports.env"
redis_cli() { local var="${1^^}"; redis-cli -p "${!var}" "${@:2}"; }
. "$here/../lib.sh"
failover "$which"
