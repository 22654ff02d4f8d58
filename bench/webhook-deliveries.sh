#!/usr/bin/env bash
# Outgoing webhook deliveries per second (issue 22): how fast one control plane drains usage-alert deliveries to
# orgs' endpoints. N orgs each set an endpoint on a local receiver (a Python ThreadingHTTPServer answering 200);
# M deliveries per endpoint are queued with one INSERT (as `store::alerts` queues them); the time until all are
# `done` gives deliveries per second. Each delivery is signed, resolved and connected anew (no pooled connection:
# the SSRF rules), one at a time per endpoint (the queue's ordering), on the runner's tasks.
#
# usage: bash bench/webhook-deliveries.sh [orgs=50] [per-org=40]
# environment: TOLLGATE_BIN_DIR (default <checkout>/target/release, else target/debug: say which in the results)
set -euo pipefail
orgs=${1:-50} per=${2:-40}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/services.sh
source "$root/scripts/lib/services.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
die() { log "$*"; exit 1; }
ensure_postgres
ensure_redis

bin=${TOLLGATE_BIN_DIR:-$root/target/release}
[ -x "$bin/tollgate-control-plane" ] || bin=$root/target/debug
[ -x "$bin/tollgate-control-plane" ] || die "no tollgate-control-plane built (cargo build --release)"

dir=$(mktemp -d /tmp/tg-bench-webhooks-XXXX)
db="tg_bench_wh_$(date +%s)_$$"
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ ${#pids[@]} = 0 ] || stop_pids "${pids[@]}"
  wait 2>/dev/null
  psql -h 127.0.0.1 -U postgres -qAtc "drop database if exists $db with (force)" >/dev/null 2>&1
  if [ "$rc" = 0 ]; then rm -rf "$dir"; else log "logs kept in $dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql -h 127.0.0.1 -U postgres -qAtc "create database $db" >/dev/null
RECV=$(free_port)
python3 - "$RECV" >"$dir/receiver.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Ok(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        self.send_response(200)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'ok')

    def log_message(self, *args):
        pass

ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Ok).serve_forever()
PY
pids+=($!)

CP=$(free_port)
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379" \
  TOLLGATE_REDIS_NAMESPACE="whb$$" TOLLGATE_ADMIN_TOKEN="tgop_bench_$$" \
  TOLLGATE_WEBHOOK_SECRETS_KEY="$(head -c 32 /dev/urandom | base64)" TOLLGATE_WEBHOOK_ALLOW_PRIVATE=true \
  TOLLGATE_PLANS="$root/config/plans.toml"
export_unreached
TOLLGATE_CP_LISTEN="127.0.0.1:$CP" "$bin/tollgate-control-plane" >"$dir/control-plane.log" 2>&1 &
cp_pid=$!; pids+=("$cp_pid")
wait_http "http://127.0.0.1:$CP/healthz" "$cp_pid" "the control plane" "$dir/control-plane.log"
auth=(-H "Authorization: Bearer $TOLLGATE_ADMIN_TOKEN" -H "Content-Type: application/json")
for i in $(seq "$orgs"); do
  curl -sf "${auth[@]}" -d "{\"orgId\":\"org_wh$i\",\"name\":\"wh $i\",\"ownerUserId\":\"user_wh$i\"}" \
    "http://127.0.0.1:$CP/api/orgs.create" >/dev/null || die "orgs.create failed"
  curl -sf "${auth[@]}" -d "{\"orgId\":\"org_wh$i\",\"url\":\"http://127.0.0.1:$RECV/hooks\",\"events\":[\"usage.threshold.crossed\"]}" \
    "http://127.0.0.1:$CP/api/webhooks/endpoints.set" >/dev/null || die "endpoints.set failed"
done
total=$((orgs * per))
log "queueing $total deliveries ($orgs endpoints x $per)"
start=$(date +%s.%N)
psql -h 127.0.0.1 -U postgres -d "$db" -qAtc "
  INSERT INTO webhook_deliveries (endpoint_id, message_id, event_type, payload)
  SELECT e.id, 'msg_bench_' || e.id || '_' || g, 'usage.threshold.crossed',
         jsonb_build_object('type', 'usage.threshold.crossed', 'orgId', 'org_wh' || e.org_id, 'metric', 'api_call',
                            'periodKey', '2026-12', 'threshold', 80, 'used', 800, 'included', 1000, 'bound', 1000)
    FROM webhook_endpoints e, generate_series(1, $per) g" >/dev/null
while :; do
  done_n=$(psql -h 127.0.0.1 -U postgres -d "$db" -qAtc "SELECT count(*) FROM webhook_deliveries WHERE status = 'done'")
  [ "$done_n" -ge "$total" ] && break
  failed=$(psql -h 127.0.0.1 -U postgres -d "$db" -qAtc "SELECT count(*) FROM webhook_deliveries WHERE status IN ('failed', 'dead')")
  [ "$failed" = 0 ] || die "$failed deliveries failed: $(psql -h 127.0.0.1 -U postgres -d "$db" -qAtc "SELECT last_error FROM webhook_deliveries WHERE last_error IS NOT NULL LIMIT 1")"
  sleep 0.2
done
end=$(date +%s.%N)
python3 -c "
s = $end - $start
print(f'$total deliveries in {s:.2f} s: {$total / s:.0f} deliveries/s ($orgs endpoints, binaries: $bin)')"
