# tally — make run | make test | make bench
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGBIN := /usr/lib/postgresql/15/bin
PGXS_SRC := /usr/lib/postgresql/15/lib/pgxs/src
PGRX_VERSION := 0.18.1
export PATH := $(HOME)/.cargo/bin:$(PATH)

TEST_PORT ?= 55433
TEST_CLUSTER := target/test-cluster
TEST_DB := tally_test
TEST_URL := postgres://postgres@127.0.0.1:$(TEST_PORT)
# The test cluster trades durability for speed; benchmarks use their own cluster.
TEST_PG_CONF := "fsync = off" "synchronous_commit = off" "full_page_writes = off"

RUN_PORT ?= 55432
RUN_CLUSTER := target/run-cluster

REGRESS_TESTS := $(shell sed -n 's/^test: //p' extension/tests/pg_regress/schedule)

.PHONY: help setup install install-release lint unit-test regress isolation e2e api-test schemathesis \
        test test-db test-cluster stop-test-cluster run bench soak clean

help:
	@echo "make run    build, install and start tally with a demo user and API"
	@echo "make test   the whole test suite (lint, pgrx, pg_regress, isolation, end-to-end, API)"
	@echo "make bench  benchmarks side by side with their baselines"

# System packages and the pinned cargo-pgrx; every step is skipped when already done.
setup:
	@missing=""; \
	for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo wrk python3-venv; do \
	    dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VERSION)"; then \
	    echo "installing cargo-pgrx $(PGRX_VERSION) (a few minutes)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked --quiet; \
	fi
	@if ! grep -qs '^pg15' $(HOME)/.pgrx/config.toml; then \
	    cargo pgrx init --pg15 $(PG_CONFIG) >/dev/null; \
	fi

install: setup
	cargo pgrx install --pg-config $(PG_CONFIG) -p tally 2>&1 | tail -1

install-release: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG) -p tally 2>&1 | tail -1

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# #[pg_test] and #[test] functions, in a throwaway cluster managed by cargo-pgrx.
unit-test: setup
	rm -rf target/pgrx-test-data
	mkdir -p target/pgrx-test-data && chown postgres target/pgrx-test-data
	cd extension && cargo pgrx test pg15 --runas postgres --pgdata $(CURDIR)/target/pgrx-test-data

# Restarted each time so that a freshly installed library is the one loaded.
test-cluster:
	tests/cluster.sh stop $(TEST_CLUSTER)
	tests/cluster.sh start $(TEST_CLUSTER) $(TEST_PORT) $(TEST_PG_CONF)

stop-test-cluster:
	tests/cluster.sh stop $(TEST_CLUSTER)

# A fresh database with the extension, for one suite.
define fresh_db
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "DROP DATABASE IF EXISTS $(1)" -c "CREATE DATABASE $(1)" 2>&1 | grep -v NOTICE || true
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d $(1) -c "CREATE EXTENSION tally"
endef

regress: test-cluster
	$(call fresh_db,tally_regress)
	mkdir -p target/regress
	$(PGXS_SRC)/test/regress/pg_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/pg_regress --outputdir=target/regress --dbname=tally_regress \
	    $(REGRESS_TESTS) || { cat target/regress/regression.diffs; exit 1; }

isolation: test-cluster
	$(call fresh_db,tally_isolation)
	mkdir -p target/isolation
	$(PGXS_SRC)/test/isolation/pg_isolation_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/isolation --outputdir=target/isolation --dbname=tally_isolation \
	    $$(sed -n 's/^test: //p' extension/tests/isolation/schedule) || { cat target/isolation/regression.diffs; exit 1; }

# The API's own tests: routing, auth and error mapping, no database needed.
api-test:
	cargo test -p tally-api

# End-to-end tests across SQL and HTTP against the test cluster.
# The fault tests start their own clusters and the API binary.
e2e: test-cluster
	cargo build -q -p tally-api
	TALLY_TEST_ADMIN_URL=$(TEST_URL)/postgres cargo test -p tally-e2e --no-fail-fast -- --test-threads=1

# The long form of the randomized and fault tests (make test runs the short form).
soak: install test-cluster
	cargo build -q -p tally-api
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	TALLY_TEST_ADMIN_URL=$(TEST_URL)/postgres TALLY_SOAK_OPS=1500 TALLY_FAULT_ROUNDS=5 \
	    cargo test -p tally-e2e --no-fail-fast --test invariant --test faults -- --test-threads=1 --nocapture

# Generated requests against /openapi.json: no server errors, no schema violations.
schemathesis: test-cluster
	$(call fresh_db,tally_schemathesis)
	tests/schemathesis.sh $(TEST_URL)/tally_schemathesis

test: setup lint unit-test api-test install
	@$(MAKE) --no-print-directory test-cluster
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	$(MAKE) --no-print-directory regress isolation e2e schemathesis

run: install-release
	tests/demo.sh

bench: install-release
	python3 tests/bench/bench.py

clean:
	tests/cluster.sh stop $(TEST_CLUSTER)
	tests/cluster.sh stop $(RUN_CLUSTER)
	rm -rf target/test-cluster target/run-cluster target/bench-cluster target/regress target/isolation target/pgrx-test-data
