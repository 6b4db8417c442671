#!/usr/bin/env bash
# `make run`: a private PostgreSQL under target/ (unless DATABASE_URL is set), the
# tally extension with a demo plan and user, and the API, until Ctrl-C.
set -euo pipefail
# A script started as a background job of a non-interactive shell (`make run &`,
# nohup, CI) inherits SIGINT ignored, and bash cannot trap a signal that was ignored
# when it started: Ctrl-C or `kill -INT` would then not stop what this starts. So it
# runs itself again once with SIGINT and SIGTERM at their defaults, which its trap
# below then catches however it was started.
if [ -z "${TALLY_DEMO_SIGNALS:-}" ]; then
    export TALLY_DEMO_SIGNALS=default
    exec env --default-signal=INT,TERM "$0" "$@"
fi
cd "$(dirname "$0")/.."

RUN_PORT=${RUN_PORT:-55432}
export TALLY_BIND=${TALLY_BIND:-127.0.0.1:8080}
# The usage page is served from its own origin; the API allows it by CORS.
PAGE_BIND=${PAGE_BIND:-127.0.0.1:8081}
export TALLY_CORS_ORIGINS=${TALLY_CORS_ORIGINS:-http://$PAGE_BIND}
CLUSTER=${RUN_CLUSTER:-target/run-cluster}
# The API binary; built here unless given (tests pass the one they built).
API_BIN=${TALLY_API_BIN:-}
mkdir -p "$CLUSTER"
started_cluster=""
api_pid=""
page_pid=""

cleanup() {
    trap - INT TERM EXIT
    if [ -n "$page_pid" ]; then
        kill "$page_pid" 2>/dev/null || true
    fi
    if [ -n "$api_pid" ] && kill -0 "$api_pid" 2>/dev/null; then
        kill -TERM "$api_pid" 2>/dev/null || true
        wait "$api_pid" 2>/dev/null || true
    fi
    if [ -n "$started_cluster" ]; then
        scripts/cluster.sh stop "$CLUSTER"
        echo "stopped the API and the PostgreSQL cluster in $CLUSTER"
    else
        echo "stopped the API"
    fi
}
trap cleanup INT TERM EXIT

if [ -z "${DATABASE_URL:-}" ]; then
    scripts/cluster.sh start "$CLUSTER" "$RUN_PORT"
    started_cluster=yes
    psql -X -q -h 127.0.0.1 -p "$RUN_PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'tally'" | grep -q 1 \
        || psql -X -q -h 127.0.0.1 -p "$RUN_PORT" -U postgres -d postgres -c "CREATE DATABASE tally"
    # A demo database created by an earlier release is updated in place, as any
    # database with tally is: its sessions and counters stay.
    psql -X -q -h 127.0.0.1 -p "$RUN_PORT" -U postgres -d tally -c "SET client_min_messages = warning" \
        -c "DO \$\$ BEGIN IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'tally') THEN ALTER EXTENSION tally UPDATE; END IF; END \$\$"
    # The API connects as a role of its own with the README's writer grants, not
    # as the superuser: what it may do is what the README documents.
    export DATABASE_URL="postgres://tally_api@127.0.0.1:$RUN_PORT/tally"
    ADMIN_URL="postgres://postgres@127.0.0.1:$RUN_PORT/tally"
else
    ADMIN_URL=$DATABASE_URL
fi

# A stable secret per checkout, so tokens printed by an earlier run keep working;
# readable by its owner only.
if [ -z "${TALLY_JWT_SECRET:-}" ]; then
    if [ ! -s "$CLUSTER/jwt-secret" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$CLUSTER/jwt-secret")
    fi
    chmod 600 "$CLUSTER/jwt-secret"
    TALLY_JWT_SECRET=$(cat "$CLUSTER/jwt-secret")
fi
export TALLY_JWT_SECRET

psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS tally;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_api') THEN
        CREATE ROLE tally_api LOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA tally TO tally_api;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO tally_api;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO tally_api;
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
VALUES ('fluency_builder', 'Fluency Builder', 30, 2) ON CONFLICT (plan_id) DO NOTHING;
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('kamile', 'fluency_builder') ON CONFLICT (user_id) DO NOTHING;
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions)
VALUES ('6f1c2a9e-0000-4000-8000-000000000001', 'kamile', 'Job interview English', 12)
ON CONFLICT (learning_plan_id) DO NOTHING;
SQL

if [ -z "$API_BIN" ]; then
    cargo build --release -q -p tally-api
    API_BIN=target/release/tally-api
fi
. scripts/wait_for.sh

"$API_BIN" serve &
api_pid=$!
wait_for "http://$TALLY_BIND/readyz" "the API"

python3 -m http.server --bind "${PAGE_BIND%:*}" --directory web "${PAGE_BIND##*:}" >/dev/null 2>&1 &
page_pid=$!
wait_for "http://$PAGE_BIND/" "the usage page server"

TOKEN=$("$API_BIN" token --sub kamile --ttl-seconds 86400)
API="http://$TALLY_BIND"
cat <<EOT

tally is running.
  API:       $API   (OpenAPI: $API/openapi.json, metrics: $API/metrics)
  database:  $DATABASE_URL
  demo user: kamile on plan fluency_builder (30 practice sessions, 2 assessments a month)

A token for kamile (valid 24 hours):
  export TOKEN=$TOKEN

Record a learning-plan session, then an assessment:
  curl -s -X POST $API/v1/sessions -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"kind": "learning_plan", "learning_plan_id": "6f1c2a9e-0000-4000-8000-000000000001", "duration_seconds": 900}'
  curl -s -X POST $API/v1/sessions -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"kind": "assessment"}'

Read usage:
  curl -s $API/v1/users/kamile/usage -H "Authorization: Bearer \$TOKEN"

The usage page (bars, learning plans, buttons that record sessions):
  http://$PAGE_BIND/#api=$API&token=$TOKEN

The analyst's view:
  psql "$ADMIN_URL" -c 'SELECT * FROM tally.current_usage'

Ctrl-C stops everything this started.
EOT
wait "$api_pid"
