#!/usr/bin/env bash
# Regenerates the client from the document the control plane serves: writes openapi.json (the served document) and
# src/schema.d.ts (openapi-typescript's types of it). The test suite fails while either is stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib/services.sh
source scripts/lib/services.sh
ensure_postgres
ensure_redis
ensure_node_deps
TOLLGATE_REGENERATE_CLIENT=1 cargo nextest run -p tollgate-e2e --test e2e \
  typescript::the_committed_client_is_generated_from_the_served_document
git -C "$root" status --short clients/typescript
