#!/usr/bin/env python3
"""Where the CPU time of a single-row insert goes: tally next to the bare insert.

`make profile` (it installs `perf`, Debian package linux-perf, when missing): the
benchmark's cluster and data (bench/bench.py's setup), then, in interleaved
rounds, each statement below from 8 pgbench clients for a few seconds under `perf
record -a` with DWARF call graphs, the whole machine sampled (backends, pgbench, WAL
writer, kernel). Each sample is given to the most specific part of the statement it
falls in (PARTS); the report is CPU microseconds per statement, both cores
together, so the parts add up to what one statement costs the machine, and
2,000,000 / total is the throughput it allows.

This measures time, not instructions: `valgrind --tool=callgrind` counts a bare
insert into a copy of tally.sessions at about 484k instructions and one into
tally.sessions at about 472k (tally keeps the table's CHECK constraints built per
connection, which the copy rebuilds for every statement), yet tally's insert takes
more time. The difference is in memory, not in instructions: every row tally reads
by key is an index descent and a heap page, each a shared buffer looked up, pinned,
locked and read.
"""

import os
import pathlib
import re
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmark's cluster, data and helpers)

SECONDS = int(os.environ.get("PROFILE_SECONDS", "8"))
ROUNDS = int(os.environ.get("PROFILE_ROUNDS", "3"))
FREQUENCY = 499
CLIENTS = 8

STATEMENTS = {
    "bare insert": bench.INSERT_ONE.format(users=bench.USERS, table="bench.plain"),
    "tally insert": bench.INSERT_ONE.format(users=bench.USERS, table="tally.sessions"),
    "tally.record_session": bench.RECORD_ONE.format(users=bench.USERS),
}

# The parts of a statement, most specific first: a sample belongs to the first whose
# frame (a substring of its name) is on its stack with the frames named after it
# below that frame (`!name`: with none of that name below it).
PARTS = [
    ("counting trigger: usage row, found by key (index and heap page)", ["tally::store::rows::add_to_usage", "tally::store::heap::Table::find_for_update"]),
    ("counting trigger: usage row, lock and update", ["tally::store::rows::add_to_usage"]),
    ("counting trigger: subscription lookup", ["tally::counting::subscription"]),
    ("counting trigger: limit check", ["tally::limits::check_limits"]),
    ("counting trigger: the rest", ["tally_sessions_count_insert"]),
    ("record_session's answer", ["record_session_answer"]),
    # RI_FKey_check_ins runs its check through SPI_execute_snapshot, as nothing else here does.
    ("foreign key checks", ["SPI_execute_snapshot"]),
    ("index inserts", ["ExecInsertIndexTuples"]),
    ("session_id's default, gen_random_uuid()", ["gen_random_uuid"]),
    ("BEFORE INSERT trigger (completed_at fill-in)", ["ExecBRInsertTriggers"]),
    ("CHECK constraints", ["ExecConstraints"]),
    ("CHECK expressions given per statement (tally)", ["executor_start_inner", "!standard_ExecutorStart"]),
    ("executor start", ["standard_ExecutorStart"]),
    ("heap insert", ["heap_insert"]),
    ("after-trigger queue", ["AfterTriggerEndQuery"]),
    ("record_session's PL/pgSQL, the rest", ["plpgsql_call_handler"]),
    ("record_session in the library, the rest", ["tally_record_session"]),
    ("executor run, the rest", ["standard_ExecutorRun"]),
    ("executor end", ["standard_ExecutorEnd"]),
    ("commit", ["CommitTransaction"]),
    ("client messages", ["secure_write", "secure_read", "pq_getbyte"]),
    ("WAL writer", ["WalWriterMain"]),
]


def below(name, inner):
    """Whether a frame named `name` is on the inner stack; `!name`: whether none is."""
    if name.startswith("!"):
        return not any(name[1:] in frame for frame in inner)
    return any(name in frame for frame in inner)


def part_of(comm, stack):
    """The part a sample belongs to: the first of PARTS whose frame is on its stack
    (leaf first) with the frames it names below it."""
    if comm == "pgbench":
        return "pgbench"
    if comm != "postgres":
        return "other processes"
    for label, (first, *rest) in PARTS:
        for depth, frame in enumerate(stack):
            if first in frame and all(below(name, stack[:depth]) for name in rest):
                return label
    return "rest of the backend"


def samples(perf_data):
    """(comm, stack) per sample of a perf.data file."""
    text = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "comm,ip,sym"],
                          capture_output=True, text=True, check=True).stdout
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        yield lines[0].split()[0], [line.split(None, 1)[-1] for line in lines[1:]]


def profile(name, script):
    path = bench.WORK / f"profile_{abs(hash(name))}.sql"
    path.write_text(script)
    pgbench = [f"{bench.PGBIN}/pgbench", "-n", "-M", "prepared", "-h", "127.0.0.1", "-p", str(bench.PORT), "-U", "postgres",
               "-c", str(CLIENTS), "-j", "4", "-f", str(path), bench.DB]
    subprocess.run(pgbench + ["-T", "3"], check=True, capture_output=True)  # warm-up
    perf_data = bench.WORK / "profile.data"
    out = subprocess.run(["perf", "record", "-q", "-a", "--call-graph", "dwarf,16384", "-F", str(FREQUENCY), "-o", str(perf_data), "--"]
                         + pgbench + ["-T", str(SECONDS)], check=True, capture_output=True, text=True).stdout
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    parts = {}
    for comm, stack in samples(perf_data):
        label = part_of(comm, stack)
        parts[label] = parts.get(label, 0) + 1
    perf_data.unlink()
    sample_us = 1_000_000 / FREQUENCY
    return transactions / SECONDS, {label: count * sample_us / transactions for label, count in parts.items()}


def main():
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("profile: perf is needed (apt-get install linux-perf)")
    bench.log(f"profile: {len(STATEMENTS)} statements, {CLIENTS} clients, {SECONDS}s each under perf")
    bench.setup()
    bench.reset("plain")
    bench.reset("tally")
    rounds = {name: [] for name in STATEMENTS}
    for round_no in range(ROUNDS):
        for name, script in STATEMENTS.items():
            tps, parts = profile(name, script)
            rounds[name].append((tps, parts))
            bench.log(f"  round {round_no + 1} {name:<22} {tps:9.0f} tps {sum(parts.values()):7.1f} CPU us per statement")
    bench.check_counters("tally")
    subprocess.run([str(bench.ROOT / "scripts/cluster.sh"), "stop", str(bench.CLUSTER)], check=True)
    order = [label for label, _ in PARTS] + ["rest of the backend", "pgbench", "other processes"]
    names = list(rounds)

    def cell(name, label):
        return bench.median([parts.get(label, 0.0) for _, parts in rounds[name]])

    print(f"\nCPU microseconds per statement (both cores), {CLIENTS} clients, medians of {ROUNDS} interleaved rounds:\n")
    print("| part | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label in order:
        cells = [cell(name, label) for name in names]
        if any(value >= 0.05 for value in cells):
            print(f"| {label} | " + " | ".join(f"{value:.1f}" for value in cells) + " |")
    totals = [bench.median([sum(parts.values()) for _, parts in rounds[name]]) for name in names]
    print("| **total** | " + " | ".join(f"**{total:.1f}**" for total in totals) + " |")
    print("| throughput while profiled | " + " | ".join(f"{bench.median([tps for tps, _ in rounds[name]]):,.0f} tps" for name in names) + " |")


if __name__ == "__main__":
    main()
