#!/usr/bin/env bash
# Instructions per statement under callgrind, for comparisons that this machine's
# noise hides in throughput (README, Performance). Each statement is prepared and
# run N times in a single-user backend on the benchmark's database (make bench fills
# it); its cost is the difference between a run of 600 and one of 100, divided by
# 500, after a warm-up run of 600, so that start-up and first reads cancel out.
#   bench/instructions.sh [ROUNDS] [LIBRARY...]
# With libraries (tally.so files, e.g. two builds to compare), each round runs every
# statement with each in turn, installed in place of the current one, which is put
# back at the end. The bench cluster is stopped for the measurement (a single-user
# backend needs the data directory to itself). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir); libdir=$("$PG_CONFIG" --pkglibdir)
cluster=${BENCH_CLUSTER:-target/bench-cluster}
data=$cluster/data
rounds=${1:-2}; shift || true
[ -f "$data/PG_VERSION" ] || { echo "no benchmark database: run make bench first" >&2; exit 1; }
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
work=$(mktemp -d); chmod 777 "$work"
installed="$work/installed.so"; cp "$libdir/tally.so" "$installed"
trap 'cp "$installed" "$libdir/tally.so"; rm -rf "$work"' EXIT
scripts/cluster.sh stop "$cluster" >/dev/null
libraries=("$@"); [ ${#libraries[@]} -gt 0 ] || libraries=("$installed")

declare -A statement=(
    [no_trigger]="INSERT INTO bench.plain (user_id, kind, started_at, completed_at) VALUES (\$1, 'practice', now(), now())"
    [row_trigger]="INSERT INTO bench.row_trigger (user_id, kind, started_at, completed_at) VALUES (\$1, 'practice', now(), now())"
    [tally]="INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES (\$1, 'practice', now(), now())"
    [record_session]="SELECT tally.record_session(\$1, 'practice', NULL, NULL, 'completed', NULL, NULL, NULL)"
)
order=(no_trigger row_trigger tally record_session)

# Instructions of one single-user backend running `name` n times (users spread over
# the benchmark's 10,000).
instructions() {
    local name=$1 n=$2 i
    {
        echo "PREPARE s(text) AS ${statement[$name]};"
        for ((i = 1; i <= n; i++)); do echo "EXECUTE s('u$(( (i * 7919) % 10000 + 1 ))');"; done
    } > "$work/script.sql"
    rm -f "$work"/callgrind.*
    sudo -u postgres valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
        "$bindir/postgres" --single -D "$data" -c log_min_messages=fatal tally_bench \
        < "$work/script.sql" > /dev/null 2> "$work/valgrind.log"
    grep -h '^summary:' "$work"/callgrind.* | awk '{print $2}'
}

for ((round = 1; round <= rounds; round++)); do
    for library in "${libraries[@]}"; do
        cp "$library" "$libdir/tally.so"
        for name in "${order[@]}"; do
            [ "$round" = 1 ] && instructions "$name" 600 > /dev/null
            small=$(instructions "$name" 100); large=$(instructions "$name" 600)
            printf 'round %d  %-40s %-15s %8d instructions per statement\n' \
                "$round" "$(basename "$library")" "$name" $(( (large - small) / 500 ))
        done
    done
done
