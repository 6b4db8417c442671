#!/usr/bin/env python3
"""`make bench`: tally side by side with its baselines, in one run.

Every workload runs in several interleaved rounds against its baselines on the same
cluster; the report gives medians and ratios. After each workload the counters are
checked against a recount, so a fast wrong answer cannot pass.

Workloads (select with BENCH_ONLY=single,durable,record,bulk,hot,http,citus; rounds with BENCH_ROUNDS):
  single  pgbench single-row INSERTs at 1, 8 and 32 clients: no trigger, PL/pgSQL row
          trigger, application-side INSERT + UPDATE, tally
  durable the single-row workload at 1, 8 and 32 clients with synchronous_commit on, as
          PostgreSQL ships: every commit waits for its WAL flush
  record  the API's call, tally.record_session (the insert and the usage document after
          it), next to a plain INSERT ... RETURNING at 8 clients and to the same
          INSERT ... RETURNING into tally.sessions (the counting alone, without the document)
  bulk    1,000,000 rows (and 100,000, for linearity) by COPY and by INSERT ... SELECT:
          no trigger, PL/pgSQL row trigger, PL/pgSQL statement trigger, tally
  hot     32 clients inserting for one user: tally vs no trigger, throughput and p99
  http    POST /v1/sessions and GET usage with wrk at 8 and 32 connections, next to
          pgbench sending the same inserts straight to PostgreSQL, and the call the API
          makes per POST (tally.record_session); API peak RSS
  citus   tally distributed on a local Citus cluster (coordinator + 2 workers), through
          the coordinator: single-row INSERTs at 8 and 32 clients and a 1,000,000-row
          COPY, against the same distributed table without tally's triggers
"""

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
PGBIN = os.environ.get("PGBIN") or subprocess.run([PG_CONFIG, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
# The PostgreSQL major measured (make bench takes PG_CONFIG): results are kept per major.
MAJOR = re.search(r"PostgreSQL (\d+)", subprocess.run([PG_CONFIG, "--version"], capture_output=True, text=True, check=True).stdout).group(1)
PORT = int(os.environ.get("BENCH_PORT", "55434"))
# One cluster per major (make bench passes it): a data directory belongs to one.
CLUSTER = ROOT / os.environ.get("BENCH_CLUSTER", "target/bench-cluster")
WORK = ROOT / "target" / f"pg{MAJOR}" / "bench"
DB = "tally_bench"
USERS = 10_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "single,durable,record,bulk,hot,http,citus").split(",")))
# The bulk workload's loads (BENCH_BULK=copy_1000000 for the 1M COPY alone).
BULK_LOADS = [(m, r) for m in ("copy", "insert_select") for r in (100_000, 1_000_000)
              if not os.environ.get("BENCH_BULK") or f"{m}_{r}" in os.environ["BENCH_BULK"].split(",")]
CITUS_PORT = int(os.environ.get("BENCH_CITUS_PORT", "55470"))
CITUS_CLUSTER = CLUSTER.parent / (CLUSTER.name + "-citus")
API_PORT = int(os.environ.get("BENCH_API_PORT", "18181"))
SECRET = "bench-secret-that-is-at-least-32-bytes-long"

# Durability as shipped except synchronous_commit, which would otherwise make every
# variant wait on the same WAL flush and hide the CPU cost being compared.
CLUSTER_CONF = [
    "synchronous_commit = off",
    "shared_buffers = 1GB",
    "max_wal_size = 16GB",
    "checkpoint_timeout = 30min",
    "max_connections = 200",
]

results = {}


def log(message):
    print(message, flush=True)


def psql(sql, db=DB, port=None):
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port or PORT), "-U", "postgres", "-d", db, "-c", sql],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"psql failed: {sql[:200]}\n{out.stderr}")
    return out.stdout.strip()


def psql_file(path, db=DB):
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", db, "-f", str(path)],
        check=True, capture_output=True, text=True,
    )


def timed(sql, port=None):
    psql("CHECKPOINT", port=port)
    start = time.perf_counter()
    psql(sql, port=port)
    return time.perf_counter() - start


def median(values):
    return statistics.median(values) if values else float("nan")


def round_ratios(values, floors):
    """Each round's value over its baseline's in the same round, as [median, lower
    quartile, upper quartile]: the machine's speed drifts over minutes, which a
    ratio of two medians taken apart carries and a ratio within a round cancels."""
    ratios = sorted(v / f for v, f in zip(values, floors))
    if len(ratios) < 2:
        return [round(r, 3) for r in ratios * 3]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return [round(statistics.median(ratios), 3), round(low, 3), round(high, 3)]


def setup():
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "stop", str(CLUSTER)], check=True)
    subprocess.run(["rm", "-rf", str(CLUSTER)], check=True)
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "start", str(CLUSTER), str(PORT), *CLUSTER_CONF], check=True)
    WORK.mkdir(parents=True, exist_ok=True)
    psql(f"CREATE DATABASE {DB}", db="postgres")
    psql("CREATE EXTENSION tally")
    # Limits high enough never to refuse, so tally runs its limit checks as in production.
    psql("INSERT INTO tally.plans VALUES ('bench', 'Bench', 1000000000, 1000000000, '1 month')")
    psql(f"INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) SELECT 'u' || i, 'bench', '2026-01-01 00:00+00' FROM generate_series(1, {USERS}) i")
    psql_file(ROOT / "bench/baselines.sql")
    for rows in (100_000, 1_000_000):
        # 80% practice, 20% assessments, over five monthly periods, all completed.
        psql(f"""CREATE UNLOGGED TABLE bench.staging_{rows} AS
                 SELECT 'u' || (1 + (i::bigint * 7919) % {USERS}) AS user_id,
                        CASE WHEN i % 5 = 0 THEN 'assessment' ELSE 'practice' END AS kind,
                        'completed'::text AS status,
                        timestamptz '2026-01-01 00:00+00' + (i % 150) * interval '1 day' + (i % 86400) * interval '1 second' AS started_at,
                        timestamptz '2026-01-01 00:20+00' + (i % 150) * interval '1 day' + (i % 86400) * interval '1 second' AS completed_at,
                        1200 AS duration_seconds
                   FROM generate_series(1, {rows}) i""")
        psql(f"\\copy bench.staging_{rows} TO '{WORK}/sessions_{rows}.csv' CSV")
    psql("VACUUM ANALYZE")


TABLES = {"plain": "bench.plain", "row_trigger": "bench.row_trigger", "stmt_trigger": "bench.stmt_trigger",
          "app_side": "bench.app_side", "tally": "tally.sessions"}


def reset(variant):
    if variant == "tally":
        # TRUNCATE is rejected by tally on purpose; the benchmark bypasses it as a superuser.
        psql("""ALTER TABLE tally.sessions DISABLE TRIGGER USER; ALTER TABLE tally.usage DISABLE TRIGGER USER;
                TRUNCATE tally.sessions, tally.usage;
                ALTER TABLE tally.sessions ENABLE TRIGGER USER; ALTER TABLE tally.usage ENABLE TRIGGER USER;""")
    else:
        table = TABLES[variant]
        psql(f"TRUNCATE {table}, {table}_usage")
    psql(f"VACUUM ANALYZE {TABLES[variant]}")


def check_counters(variant, expected_completed=None):
    """Counters must equal a recount of the rows; returns the number of counted sessions."""
    if variant == "plain":
        return None
    if variant == "tally":
        drift = int(psql("SELECT count(*) FROM tally.verify()"))
        counted = int(psql("SELECT coalesce(sum(practice_sessions_used + assessments_used), 0) FROM tally.usage"))
    else:
        drift = int(psql(f"SELECT bench.mismatches('{variant.split('.')[-1]}')"))
        counted = int(psql(f"SELECT coalesce(sum(practice_sessions_used + assessments_used), 0) FROM {TABLES[variant]}_usage"))
    if drift:
        sys.exit(f"{variant}: {drift} counters disagree with a recount")
    if expected_completed is not None and counted != expected_completed:
        sys.exit(f"{variant}: counted {counted}, expected {expected_completed}")
    return counted


# ---------------------------------------------------------------- bulk ----

BULK_VARIANTS = ["plain", "row_trigger", "stmt_trigger", "tally"]
COLUMNS = "user_id, kind, status, started_at, completed_at, duration_seconds"


def bulk():
    times = {}
    for round_no in range(ROUNDS):
        for method, rows in BULK_LOADS:
            for variant in BULK_VARIANTS:
                reset(variant)
                table = TABLES[variant]
                if method == "copy":
                    sql = f"\\copy {table} ({COLUMNS}) FROM '{WORK}/sessions_{rows}.csv' CSV"
                else:
                    sql = f"INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM bench.staging_{rows}"
                seconds = timed(sql)
                check_counters(variant, expected_completed=rows)
                times.setdefault((method, rows, variant), []).append(seconds)
                log(f"  bulk round {round_no + 1} {method} {rows:>9,} {variant:<12} {seconds:7.2f} s")
    report = []
    for method, rows in BULK_LOADS:
        floor = median(times[(method, rows, "plain")])
        for variant in BULK_VARIANTS:
            m = median(times[(method, rows, variant)])
            report.append({"method": method, "rows": rows, "variant": variant, "median_s": round(m, 2),
                           "vs_no_trigger": round(m / floor, 2),
                           "round_ratios": round_ratios(times[(method, rows, variant)], times[(method, rows, "plain")])})
    for method in ("copy", "insert_select"):
        if (method, 1_000_000) in BULK_LOADS and (method, 100_000) in BULK_LOADS:
            tally_1m, tally_100k = median(times[(method, 1_000_000, "tally")]), median(times[(method, 100_000, "tally")])
            report.append({"method": method, "rows": "1M/100k", "variant": "tally", "median_s": None,
                           "vs_no_trigger": None, "scaling": round(tally_1m / tally_100k, 2)})
    results["bulk"] = report


# -------------------------------------------------------------- single ----

def pgbench(script_text, clients, seconds, log_prefix=None, options=None, port=None):
    script = WORK / f"script_{abs(hash(script_text))}.sql"
    script.write_text(script_text)
    cmd = [f"{PGBIN}/pgbench", "-n", "-M", "prepared", "-h", "127.0.0.1", "-p", str(port or PORT), "-U", "postgres",
           "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds), "-f", str(script), DB]
    if log_prefix:
        cmd[1:1] = ["-l", f"--log-prefix={log_prefix}"]
    env = dict(os.environ, PGOPTIONS=options) if options else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=WORK, env=env).stdout
    tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))
    return tps


# completed_at is sent by every variant: the baseline copies have tally's CHECKs but
# not its fill-in trigger.
INSERT_ONE = "\\set uid random(1, {users})\nINSERT INTO {table} (user_id, kind, started_at, completed_at) VALUES ('u' || :uid, 'practice', now(), now());\n"
APP_SIDE = """\\set uid random(1, {users})
BEGIN;
INSERT INTO bench.app_side (user_id, kind, started_at, completed_at) VALUES ('u' || :uid, 'practice', now(), now());
INSERT INTO bench.app_side_usage AS u (user_id, period_start, period_end, practice_sessions_used)
SELECT s.user_id, tally.period_start_for(s.period_anchor, p.period, now()), tally.period_end_for(s.period_anchor, p.period, now()), 1
  FROM tally.subscriptions s JOIN tally.plans p USING (plan_id) WHERE s.user_id = 'u' || :uid
ON CONFLICT (user_id, period_start) DO UPDATE SET practice_sessions_used = u.practice_sessions_used + 1;
END;
"""
SINGLE_VARIANTS = ["plain", "row_trigger", "app_side", "tally"]


def single_script(variant, users=USERS):
    if variant == "app_side":
        return APP_SIDE.format(users=users)
    return INSERT_ONE.format(users=users, table=TABLES[variant])


def single():
    tps = {}
    for variant in SINGLE_VARIANTS:
        reset(variant)
    for round_no in range(ROUNDS):
        for clients in (1, 8, 32):
            for variant in SINGLE_VARIANTS:
                value = pgbench(single_script(variant), clients, DURATION)
                tps.setdefault((clients, variant), []).append(value)
                log(f"  single round {round_no + 1} clients {clients:>2} {variant:<12} {value:9.0f} tps")
    for variant in SINGLE_VARIANTS:
        check_counters(variant)
    report = []
    for clients in (1, 8, 32):
        floor = median(tps[(clients, "plain")])
        for variant in SINGLE_VARIANTS:
            m = median(tps[(clients, variant)])
            report.append({"clients": clients, "variant": variant, "median_tps": round(m), "vs_no_trigger": round(m / floor, 2),
                           "round_ratios": round_ratios(tps[(clients, variant)], tps[(clients, "plain")])})
    results["single"] = report


def durable():
    tps = {}
    variants = ["plain", "row_trigger", "tally"]
    for round_no in range(ROUNDS):
        for clients in (1, 8, 32):
            for variant in variants:
                value = pgbench(single_script(variant), clients, DURATION, options="-c synchronous_commit=on")
                tps.setdefault((clients, variant), []).append(value)
                log(f"  durable round {round_no + 1} clients {clients:>2} {variant:<12} {value:9.0f} tps")
    for variant in variants:
        check_counters(variant)
    report = []
    for clients in (1, 8, 32):
        floor = median(tps[(clients, "plain")])
        for variant in variants:
            m = median(tps[(clients, variant)])
            report.append({"clients": clients, "variant": variant, "median_tps": round(m), "vs_no_trigger": round(m / floor, 2)})
    results["durable"] = report


# The API's call against the plainest insert that also answers with the row, and
# against that insert into tally.sessions: what counting alone costs the call, before
# the usage document and the function around the insert.
INSERT_RETURNING = "\\set uid random(1, {users})\nINSERT INTO {table} (user_id, kind, started_at, completed_at) VALUES ('u' || :uid, 'practice', now(), now()) RETURNING *;\n"


def record():
    tps = {}
    reset("plain")
    reset("tally")
    scripts = {"insert_returning": INSERT_RETURNING.format(users=USERS, table="bench.plain"),
               "tally_insert_returning": INSERT_RETURNING.format(users=USERS, table="tally.sessions"),
               "record_session": RECORD_ONE.format(users=USERS)}
    for round_no in range(ROUNDS):
        for variant, script in scripts.items():
            value = pgbench(script, 8, DURATION)
            tps.setdefault(variant, []).append(value)
            log(f"  record round {round_no + 1} clients  8 {variant:<16} {value:9.0f} tps")
    check_counters("tally")
    floor = median(tps["insert_returning"])
    results["record"] = [{"clients": 8, "variant": v, "median_tps": round(median(t)), "vs_insert_returning": round(median(t) / floor, 2),
                          "round_ratios": round_ratios(t, tps["insert_returning"])}
                         for v, t in tps.items()]


# ----------------------------------------------------------------- hot ----

def p99_from_logs(prefix):
    latencies = []
    for path in WORK.glob(f"{prefix}.*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]))
        path.unlink()
    latencies.sort()
    return latencies[int(len(latencies) * 0.99) - 1] / 1000.0 if latencies else float("nan")


def hot():
    measured = {}
    for variant in ("plain", "tally"):
        reset(variant)
    for round_no in range(ROUNDS):
        for variant in ("plain", "tally"):
            prefix = f"hot_{variant}"
            value = pgbench(single_script(variant, users=1), 32, DURATION, log_prefix=prefix)
            p99 = p99_from_logs(prefix)
            measured.setdefault(variant, []).append((value, p99))
            log(f"  hot round {round_no + 1} {variant:<6} {value:9.0f} tps  p99 {p99:7.2f} ms")
    check_counters("tally")
    floor = median([t for t, _ in measured["plain"]])
    results["hot"] = [
        {"variant": v, "median_tps": round(median([t for t, _ in m])), "median_p99_ms": round(median([p for _, p in m]), 2),
         "vs_no_trigger": round(median([t for t, _ in m]) / floor, 2)}
        for v, m in measured.items()
    ]


# ---------------------------------------------------------------- http ----

# Requests are built once per wrk thread (1,000 users drawn at random, cycled), so
# that the load generator spends its CPU on sending, not on Lua string building.
# Each thread draws its own users, as each pgbench client does. {prepare} sets the
# thread's method and headers; {request} builds one request for `user`.
WRK_SCRIPT = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

local requests, n = {{}}, 0
init = function(args)
  math.randomseed(id * 7919)
  wrk.headers["Authorization"] = "Bearer {token}"
  {prepare}
  for i = 1, 1000 do
    local user = "u" .. math.random(1, {users})
    requests[i] = {request}
  end
end
request = function()
  n = n % 1000 + 1
  return requests[n]
end
"""
WRK_POST = {
    "prepare": 'wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"',
    "request": """wrk.format(nil, "/v1/sessions", nil, '{"kind":"practice","user_id":"' .. user .. '"}')""",
}
WRK_GET = {"prepare": "", "request": 'wrk.format("GET", "/v1/users/" .. user .. "/usage")'}
# What the API sends for each POST, sent straight: the insert and the usage read
# after it, in one call.
RECORD_ONE = "\\set uid random(1, {users})\nSELECT tally.record_session('u' || :uid, 'practice', NULL, NULL, 'completed', NULL, NULL, NULL);\n"


def wrk(script_text, connections):
    script = WORK / f"wrk_{abs(hash(script_text))}.lua"
    script.write_text(script_text)
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{DURATION}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{API_PORT}"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p99_text = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99_text.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    return rps, float(p99_text.group(1)) * scale


def http():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tally-api"], check=True, cwd=ROOT)
    binary = ROOT / "target/release/tally-api"
    # Pool: 2 connections per core of the database machine, as the README advises;
    # more backends than that only queue for the same 2 cores (and are preempted
    # while holding locks, which shows in p99).
    env = dict(os.environ, DATABASE_URL=f"postgres://postgres@127.0.0.1:{PORT}/{DB}", TALLY_BIND=f"127.0.0.1:{API_PORT}",
               TALLY_JWT_SECRET=SECRET, TALLY_POOL_SIZE="4", RUST_LOG="warn")
    api = subprocess.Popen([str(binary), "serve"], env=env)
    try:
        for _ in range(100):
            if subprocess.run(["curl", "-fs", f"http://127.0.0.1:{API_PORT}/readyz"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        token = subprocess.run([str(binary), "token", "--sub", "bench", "--role", "service"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip()
        reset("tally")
        measured = {}
        for round_no in range(ROUNDS):
            for connections in (8, 32):
                post = wrk(WRK_SCRIPT.format(token=token, users=USERS, **WRK_POST), connections)
                get = wrk(WRK_SCRIPT.format(token=token, users=USERS, **WRK_GET), connections)
                direct = pgbench(single_script("tally"), connections, DURATION)
                record = pgbench(RECORD_ONE.format(users=USERS), connections, DURATION)
                measured.setdefault(connections, []).append((post, get, direct, record))
                log(f"  http round {round_no + 1} c={connections:>2} POST {post[0]:7.0f} rps p99 {post[1]:6.2f} ms | "
                    f"GET {get[0]:7.0f} rps p99 {get[1]:6.2f} ms | pgbench INSERT {direct:7.0f} tps | "
                    f"pgbench record_session {record:7.0f} tps")
        rss_kib = int(re.search(r"VmHWM:\s+(\d+) kB", pathlib.Path(f"/proc/{api.pid}/status").read_text()).group(1))
    finally:
        api.terminate()
        api.wait(timeout=30)
    check_counters("tally")
    report = []
    for connections, runs in measured.items():
        post_rps = median([r[0][0] for r in runs])
        direct = median([r[2] for r in runs])
        record = median([r[3] for r in runs])
        report.append({"connections": connections, "post_rps": round(post_rps), "post_p99_ms": round(median([r[0][1] for r in runs]), 2),
                       "get_rps": round(median([r[1][0] for r in runs])), "get_p99_ms": round(median([r[1][1] for r in runs]), 2),
                       "pgbench_direct_tps": round(direct), "post_vs_direct": round(post_rps / direct, 2),
                       "pgbench_record_tps": round(record), "post_vs_record": round(post_rps / record, 2)})
    results["http"] = {"runs": report, "api_peak_rss_mib": round(rss_kib / 1024, 1)}


# --------------------------------------------------------------- citus ----

# The baseline: a distributed copy of tally.sessions, co-located, with the same keys
# and foreign keys, and no triggers.
CITUS_BASELINE = """
SET client_min_messages = warning;
CREATE SCHEMA bench;
CREATE TABLE bench.plain (LIKE tally.sessions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
SELECT create_distributed_table('bench.plain', 'user_id', colocate_with => 'tally.subscriptions');
ALTER TABLE bench.plain ADD FOREIGN KEY (user_id) REFERENCES tally.subscriptions ON DELETE CASCADE;
ALTER TABLE bench.plain ADD FOREIGN KEY (kind) REFERENCES tally.session_kinds;
"""
CITUS_TABLES = {"plain": "bench.plain", "tally": "tally.sessions"}


def citus_reset(variant):
    port = CITUS_PORT
    if variant == "tally":
        # TRUNCATE is rejected by tally on purpose; the benchmark bypasses it as a superuser.
        for sql in ("ALTER TABLE tally.sessions DISABLE TRIGGER USER", "ALTER TABLE tally.usage DISABLE TRIGGER USER",
                    "TRUNCATE tally.sessions, tally.usage",
                    "ALTER TABLE tally.sessions ENABLE TRIGGER USER", "ALTER TABLE tally.usage ENABLE TRIGGER USER"):
            psql(sql, port=port)
    else:
        psql("TRUNCATE bench.plain", port=port)
    psql(f"VACUUM ANALYZE {CITUS_TABLES[variant]}", port=port)


def citus_check(expected=None):
    drift = int(psql("SELECT count(*) FROM tally.verify()", port=CITUS_PORT))
    counted = int(psql("SELECT coalesce(sum(practice_sessions_used + assessments_used), 0) FROM tally.usage", port=CITUS_PORT))
    if drift:
        sys.exit(f"citus: {drift} counters disagree with a recount")
    if expected is not None and counted != expected:
        sys.exit(f"citus: counted {counted}, expected {expected}")
    return counted


def citus():
    cluster, port = str(CITUS_CLUSTER), str(CITUS_PORT)
    subprocess.run([str(ROOT / "scripts/citus_cluster.sh"), "stop", cluster], check=True)
    subprocess.run(["rm", "-rf", cluster], check=True)
    subprocess.run([str(ROOT / "scripts/citus_cluster.sh"), "start", cluster, port], check=True)
    try:
        subprocess.run([str(ROOT / "scripts/citus_db.sh"), port, DB], check=True)
        psql("CREATE EXTENSION tally", port=CITUS_PORT)
        psql("SET client_min_messages = warning; SELECT tally.distribute()", port=CITUS_PORT)
        psql("INSERT INTO tally.plans VALUES ('bench', 'Bench', 1000000000, 1000000000, '1 month')", port=CITUS_PORT)
        psql(f"INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) SELECT 'u' || i, 'bench', '2026-01-01 00:00+00' FROM generate_series(1, {USERS}) i", port=CITUS_PORT)
        for statement in filter(str.strip, CITUS_BASELINE.split(";\n")):
            psql(statement, port=CITUS_PORT)
        rows = 1_000_000
        csv = WORK / f"sessions_{rows}.csv"
        if not csv.exists():
            sys.exit(f"{csv} is missing: the citus workload reuses the bulk workload's file (setup writes it)")
        tps, copy = {}, {}
        for round_no in range(ROUNDS):
            for clients in (8, 32):
                for variant in ("plain", "tally"):
                    script = INSERT_ONE.format(users=USERS, table=CITUS_TABLES[variant])
                    value = pgbench(script, clients, DURATION, port=CITUS_PORT)
                    tps.setdefault((clients, variant), []).append(value)
                    log(f"  citus round {round_no + 1} clients {clients:>2} {variant:<6} {value:9.0f} tps")
            for variant in ("plain", "tally"):
                citus_reset(variant)
                seconds = timed(f"\\copy {CITUS_TABLES[variant]} ({COLUMNS}) FROM '{csv}' CSV", port=CITUS_PORT)
                if variant == "tally":
                    citus_check(expected=rows)
                copy.setdefault(variant, []).append(seconds)
                log(f"  citus round {round_no + 1} COPY {rows:,} {variant:<6} {seconds:7.2f} s")
        report = {"single": [], "copy": {}}
        for clients in (8, 32):
            floor, m = median(tps[(clients, "plain")]), median(tps[(clients, "tally")])
            report["single"].append({"clients": clients, "plain_tps": round(floor), "tally_tps": round(m),
                                     "ratio": round(m / floor, 2)})
        floor, m = median(copy["plain"]), median(copy["tally"])
        report["copy"] = {"rows": rows, "plain_s": round(floor, 2), "tally_s": round(m, 2), "ratio": round(m / floor, 2)}
        results["citus"] = report
    finally:
        subprocess.run([str(ROOT / "scripts/citus_cluster.sh"), "stop", cluster], check=True)


def spread(entry):
    """A report entry's round ratios as text: median (lower quartile–upper quartile)."""
    mid, low, high = entry["round_ratios"]
    return f"{mid:.2f}x ({low:.2f}–{high:.2f})"


def markdown(results):
    """The README tables for a results dictionary."""
    out = [f"PostgreSQL {results.get('major', MAJOR)}:", ""]
    if "single" in results:
        out += ["Single-row INSERT, pgbench -M prepared, 10,000 users (tps, median; ratio to no trigger):", "",
                "| clients | no trigger | PL/pgSQL row trigger | app-side INSERT + UPDATE | tally | tally / row trigger |",
                "|---|---|---|---|---|---|"]
        for clients in (1, 8, 32):
            row = {r["variant"]: r for r in results["single"] if r["clients"] == clients}
            cells = [f"{row[v]['median_tps']:,} ({row[v]['vs_no_trigger']:.2f}x)" for v in SINGLE_VARIANTS]
            cells.append(f"{row['tally']['median_tps'] / row['row_trigger']['median_tps']:.2f}x")
            out.append(f"| {clients} | " + " | ".join(cells) + " |")
        out += ["", "tally over no trigger, round by round (median, quartiles): " + "; ".join(
            f"{r['clients']} client{'s' if r['clients'] > 1 else ''} {spread(r)}" for r in results["single"] if r["variant"] == "tally" and "round_ratios" in r) + ".", ""]
    if "durable" in results:
        out += ["The same with synchronous_commit on (PostgreSQL's default durability):", "",
                "| clients | no trigger | PL/pgSQL row trigger | tally | tally / row trigger |", "|---|---|---|---|---|"]
        for clients in sorted({r["clients"] for r in results["durable"]}):
            row = {r["variant"]: r for r in results["durable"] if r["clients"] == clients}
            cells = [f"{row[v]['median_tps']:,} ({row[v]['vs_no_trigger']:.2f}x)" for v in ("plain", "row_trigger", "tally")]
            cells.append(f"{row['tally']['median_tps'] / row['row_trigger']['median_tps']:.2f}x")
            out.append(f"| {clients} | " + " | ".join(cells) + " |")
        out.append("")
    if "record" in results:
        row = {r["variant"]: r for r in results["record"]}
        out += ["The API's call, `tally.record_session` (insert and usage document), 8 clients:", "",
                "| INSERT … RETURNING, no trigger | INSERT … RETURNING into tally.sessions (counting alone) "
                "| tally.record_session | record_session / no trigger |", "|---|---|---|---|",
                f"| {row['insert_returning']['median_tps']:,} tps "
                f"| {row['tally_insert_returning']['median_tps']:,} tps ({row['tally_insert_returning']['vs_insert_returning']:.2f}x) "
                f"| {row['record_session']['median_tps']:,} tps | {row['record_session']['vs_insert_returning']:.2f}x |", ""]
        if "round_ratios" in row["record_session"]:
            out += [f"Round by round over the plain INSERT … RETURNING (median, quartiles): counting alone "
                    f"{spread(row['tally_insert_returning'])}, record_session {spread(row['record_session'])}.", ""]
    if "bulk" in results:
        out += ["Bulk loads, 10,000 users, five periods (seconds, median; ratio to no trigger):", "",
                "| load | no trigger | PL/pgSQL row trigger | PL/pgSQL statement trigger | tally |", "|---|---|---|---|---|"]
        for method, label in (("copy", "COPY"), ("insert_select", "INSERT … SELECT")):
            for rows in (100_000, 1_000_000):
                row = {r["variant"]: r for r in results["bulk"] if r["method"] == method and r["rows"] == rows}
                if not row:
                    continue
                cells = [f"{row[v]['median_s']:.2f} ({row[v]['vs_no_trigger']:.2f}x)" for v in BULK_VARIANTS]
                out.append(f"| {label} {rows:,} | " + " | ".join(cells) + " |")
        scaling = {r["method"]: r["scaling"] for r in results["bulk"] if r.get("scaling")}
        if scaling:
            out += ["", f"tally 1M / 100k: COPY {scaling.get('copy')}x, INSERT … SELECT {scaling.get('insert_select')}x."]
        out += ["", "tally over no trigger, round by round (median, quartiles): " + "; ".join(
            f"{r['method'].replace('_', ' ')} {r['rows']:,} {spread(r)}" for r in results["bulk"]
            if r["variant"] == "tally" and "round_ratios" in r) + ".", ""]
    if "hot" in results:
        out += ["One hot user, 32 clients:", "", "| | tps (median) | p99 ms | ratio |", "|---|---|---|---|"]
        for r in results["hot"]:
            out.append(f"| {r['variant'].replace('plain', 'no trigger')} | {r['median_tps']:,} | {r['median_p99_ms']} | {r['vs_no_trigger']:.2f}x |")
        out.append("")
    if "http" in results:
        out += ["HTTP (wrk, 2 threads) next to pgbench sending the same inserts straight to PostgreSQL, and the same",
                "call the API makes (insert and usage read, `tally.record_session`):", "",
                "| connections | POST rps | POST p99 ms | GET usage rps | GET p99 ms | pgbench INSERT tps | POST / INSERT "
                "| pgbench record_session tps | POST / record_session |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in results["http"]["runs"]:
            out.append(f"| {r['connections']} | {r['post_rps']:,} | {r['post_p99_ms']} | {r['get_rps']:,} | {r['get_p99_ms']} | "
                       f"{r['pgbench_direct_tps']:,} | {r['post_vs_direct']:.2f}x | "
                       f"{r.get('pgbench_record_tps', 0):,} | {r.get('post_vs_record', 0):.2f}x |")
        out += ["", f"API peak RSS: {results['http']['api_peak_rss_mib']} MiB.", ""]
    if "citus" in results:
        c = results["citus"]
        out += ["On Citus (coordinator + 2 workers on this machine), through the coordinator, against the same",
                "distributed table without tally's triggers (median; ratio tally / no trigger):", "",
                "| workload | no trigger | tally | ratio |", "|---|---|---|---|"]
        for r in c["single"]:
            out.append(f"| single-row INSERT, {r['clients']} clients | {r['plain_tps']:,} tps | {r['tally_tps']:,} tps | {r['ratio']:.2f}x |")
        out.append(f"| COPY {c['copy']['rows']:,} rows | {c['copy']['plain_s']:.2f} s | {c['copy']['tally_s']:.2f} s | {c['copy']['ratio']:.2f}x |")
        out.append("")
    return "\n".join(out)


def main():
    if sys.argv[1:2] == ["--markdown"]:
        # Files of one major are merged (workloads run apart); each major is reported
        # on its own.
        by_major = {}
        for path in sys.argv[2:]:
            found = json.loads(pathlib.Path(path).read_text())
            by_major.setdefault(found.get("major", MAJOR), {}).update(found)
        print("\n".join(markdown(merged) for merged in by_major.values()))
        return
    log(f"bench: PostgreSQL {MAJOR}, {ROUNDS} rounds, {DURATION}s per timed run, workloads {sorted(ONLY)}")
    results["major"] = MAJOR
    setup()
    for name, run in (("single", single), ("durable", durable), ("record", record), ("bulk", bulk), ("hot", hot), ("http", http), ("citus", citus)):
        if name in ONLY:
            log(f"{name}:")
            run()
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "stop", str(CLUSTER)], check=True)
    out = WORK / f"results-{'-'.join(sorted(ONLY))}.json"
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    log(f"results written to {out}")


if __name__ == "__main__":
    main()
