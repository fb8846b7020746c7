# Shared steps of the seed's scripts, for the Compose and the native layouts alike.
# The caller defines `sentinel_cli N ARGS...` and `redis_cli a|b|c ARGS...` and sets
# MASTER_HOST, MASTER_PORT (the master as the sentinels reach it) and GATEWAY_URL.

SECRET=${SECRET:-352d20ee67be67f6340b4c0605b044b7}
DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Points the three sentinels at the master, then creates `testkey` with the seed's key body.
bootstrap() {
  for i in 1 2 3; do
    sentinel_cli "$i" SENTINEL REMOVE mymaster >/dev/null 2>&1 || true
    sentinel_cli "$i" SENTINEL MONITOR mymaster "$MASTER_HOST" "$MASTER_PORT" 2 >/dev/null
    sentinel_cli "$i" SENTINEL SET mymaster down-after-milliseconds "${DOWN_AFTER_MS:-5000}" >/dev/null
    sentinel_cli "$i" SENTINEL SET mymaster failover-timeout 30000 >/dev/null
  done
  echo "sentinels monitor mymaster at $MASTER_HOST:$MASTER_PORT"
  wait_sentinels_ready
  local deadline=$((SECONDS + 60)) answer=""
  while :; do
    answer=$(curl -s -o /dev/stderr -w '%{http_code}' -X POST "$GATEWAY_URL/tyk/keys/testkey" \
      -H "x-tyk-authorization: $SECRET" -H 'content-type: application/json' \
      --data @"$DEPLOY_DIR/templates/seed_key.json" 2>/dev/null) || true
    [ "$answer" = "200" ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "bootstrap: the gateway did not store testkey (last status: ${answer:-none})" >&2
      return 1
    fi
    sleep 1
  done
  echo "created testkey; try:"
  echo "  curl $GATEWAY_URL/tyk-api-test/get -H 'authorization: testkey'"
}

# A failover needs every sentinel to know both replicas (from the master's INFO) and its two
# peers (from hello messages every 2 s); freezing the master before that leaves no quorum or
# no replica to promote, and a failed election waits 2 x failover-timeout before retrying.
wait_sentinels_ready() {
  local deadline=$((SECONDS + 60)) i state
  for i in 1 2 3; do
    while :; do
      state=$(sentinel_cli "$i" SENTINEL MASTER mymaster 2>/dev/null | paste - - | tr -d '\r') || true
      if grep -qx $'num-slaves\t2' <<<"$state" && grep -qx $'num-other-sentinels\t2' <<<"$state"; then
        break
      fi
      if [ $SECONDS -ge $deadline ]; then
        echo "bootstrap: sentinel-$i does not see 2 replicas and 2 peers after 60 s" >&2
        return 1
      fi
      sleep 0.5
    done
  done
  echo "sentinels see 2 replicas and each other"
}

# Freezes one instance for 30 s, as the seed's failover.sh does.
failover() {
  local which=${1:-a}
  case "$which" in a|b|c) ;; *) echo "usage: failover.sh [a|b|c]" >&2; return 2 ;; esac
  (redis_cli "$which" DEBUG SLEEP 30 >/dev/null 2>&1 &)
  echo "redis-$which will not respond for 30 seconds"
}
