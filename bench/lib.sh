# Process helpers shared by the bench scripts (sourced after scripts/lib/services.sh, which defines `log`).

# alive PID: the process exists and is not a zombie
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }

# stop_pids PID...: SIGTERM, the last given first (started last, stopped first); whatever is still up after 8 s (a
# graceful drain) is killed
stop_pids() {
  local i p pids=("$@")
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq 80); do
    p=; for i in "${pids[@]}"; do if alive "$i"; then p=1; fi; done
    if [ -z "$p" ]; then break; fi; sleep 0.1
  done
  for i in "${pids[@]}"; do if alive "$i"; then kill -9 "$i" 2>/dev/null || true; fi; done
}

# wait_http URL PID WHAT LOG: until URL answers 2xx; fails early, showing LOG, when PID has exited
wait_http() {
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$1" && return 0
    alive "$2" || { log "$3 exited:"; tail -n 20 "$4" >&2; return 1; }
    sleep 0.2
  done
  log "$3 did not answer $1 within 120 s:"; tail -n 20 "$4" >&2; return 1
}

# export_unreached: the settings the control plane and the proxy require for services a benchmark never calls
# (Stripe, Stigg and Clerk at a closed port), the same in every bench script; quiet logs
export_unreached() {
  export STRIPE_SECRET_KEY=sk_test_bench STRIPE_API_BASE=http://127.0.0.1:9 STRIPE_WEBHOOK_SECRET=whsec_bench \
    STIGG_API_KEY=bench STIGG_API_URL=http://127.0.0.1:9/graphql CLERK_JWKS_URL=http://127.0.0.1:9/jwks \
    TOLLGATE_BILLING_RETURN_URL=http://127.0.0.1:9/billing RUST_LOG=warn
}
