#!/usr/bin/env bash
# The usage page (web/) in headless Chromium: the page served from one origin by a
# static file server, the API from another with CORS for the page's origin, over a
# real PostgreSQL with the extension. Saves target/usage-page.png.
#   tests/browser_test.sh DATABASE_URL
set -euo pipefail
cd "$(dirname "$0")/.."
database_url=${1:?database url}
api_port=${BROWSER_TEST_API_PORT:-18096}
page_port=${BROWSER_TEST_PAGE_PORT:-18097}
chromium=${CHROMIUM:-$(command -v chromium || true)}
[ -x "$chromium" ] || { echo "chromium is not installed (make setup installs it)" >&2; exit 1; }

cargo build -q -p tally-api
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

psql -X -q -v ON_ERROR_STOP=1 "$database_url" <<'SQL'
SET client_min_messages = warning;
INSERT INTO tally.plans VALUES ('page_plan', 'Page plan', 3, 1, '1 month'), ('page_open', 'Open', NULL, NULL, '1 month');
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('page_user', 'page_plan'), ('page_cors', 'page_open');
INSERT INTO tally.learning_plans (user_id, title, total_sessions) VALUES ('page_user', 'Job interview English', 12);
SQL

export TALLY_JWT_SECRET=browser-test-secret-that-is-long-enough
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT
DATABASE_URL=$database_url TALLY_BIND=127.0.0.1:$api_port TALLY_CORS_ORIGINS=http://127.0.0.1:$page_port \
    RUST_LOG=warn target/debug/tally-api &
pids+=($!)
python3 -m http.server --bind 127.0.0.1 --directory web "$page_port" >/dev/null 2>&1 &
pids+=($!)
. scripts/wait_for.sh
wait_for "http://127.0.0.1:$api_port/readyz" "the API"
wait_for "http://127.0.0.1:$page_port/" "the page server"

mkdir -p target
PAGE_URL=http://127.0.0.1:$page_port API_URL=http://127.0.0.1:$api_port CHROMIUM=$chromium \
TOKEN=$(target/debug/tally-api token --sub page_user) CORS_TOKEN=$(target/debug/tally-api token --sub page_cors) \
SCREENSHOT=$PWD/target/usage-page.png \
    node --test tests/browser/
echo "screenshot: target/usage-page.png"
