#!/usr/bin/env bash
# The TypeScript client (clients/typescript): its generated files match what the API
# serves now, it type-checks, and its tests run under Node against the real API over
# a real PostgreSQL with the extension.
#   tests/client_test.sh DATABASE_URL
set -euo pipefail
cd "$(dirname "$0")/.."
database_url=${1:?database url}
port=${CLIENT_TEST_API_PORT:-18098}
client=clients/typescript

cargo build -q -p tally-api
(cd "$client" && npm ci --no-audit --no-fund --loglevel=error)

# The committed document and types are what the API serves and generates today.
target/debug/tally-api openapi > target/openapi.json
diff -u "$client/openapi.json" target/openapi.json \
    || { echo "clients/typescript/openapi.json is stale: run make client" >&2; exit 1; }
(cd "$client" && npx openapi-typescript ../../target/openapi.json --output ../../target/schema.d.ts >/dev/null)
diff -u "$client/src/schema.d.ts" target/schema.d.ts \
    || { echo "clients/typescript/src/schema.d.ts is stale: run make client" >&2; exit 1; }
(cd "$client" && rm -rf dist && npx tsc -p .)

psql -X -q -v ON_ERROR_STOP=1 "$database_url" <<'SQL'
SET client_min_messages = warning;
INSERT INTO tally.plans VALUES ('client_plan', 'Client plan', 30, 2, '1 month');
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('client_user', 'client_plan'), ('client_other', 'client_plan');
SQL

export TALLY_JWT_SECRET=client-test-secret-that-is-long-enough
DATABASE_URL=$database_url TALLY_BIND=127.0.0.1:$port RUST_LOG=warn target/debug/tally-api &
api_pid=$!
trap 'kill $api_pid 2>/dev/null; wait $api_pid 2>/dev/null || true' EXIT
. scripts/wait_for.sh
wait_for "http://127.0.0.1:$port/readyz" "the API"

cd "$client"
TALLY_URL=http://127.0.0.1:$port TALLY_USER=client_user TALLY_OTHER_USER=client_other \
TALLY_TOKEN=$(../../target/debug/tally-api token --sub client_user) \
    node --test dist/test/
