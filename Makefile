# tally — make run | make test | make bench
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Every PostgreSQL path comes from PG_CONFIG.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
export PGBIN := $(shell $(PG_CONFIG) --bindir)
PGXS_SRC := $(abspath $(dir $(shell $(PG_CONFIG) --pgxs))..)
PG_SHAREDIR := $(shell $(PG_CONFIG) --sharedir)
PG_PKGLIBDIR := $(shell $(PG_CONFIG) --pkglibdir)
PG_MAJOR := $(shell $(PG_CONFIG) --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
PGRX_VERSION := 0.18.1
export PATH := $(HOME)/.cargo/bin:$(PATH)

# The extension's version, and every earlier release an upgrade is tested from.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' extension/Cargo.toml)
RELEASES := 0.1.0 0.2.0 0.3.0 0.4.0 0.5.0 0.6.0 0.7.0 0.8.0 0.9.0 0.10.0

TEST_PORT ?= 55433
TEST_CLUSTER := target/test-cluster
TEST_DB := tally_test
TEST_URL := postgres://postgres@127.0.0.1:$(TEST_PORT)
# The test cluster trades durability for speed; benchmarks use their own cluster.
TEST_PG_CONF := "fsync = off" "synchronous_commit = off" "full_page_writes = off"

# make test-citus: a coordinator and two workers on CITUS_PORT, CITUS_PORT+1, +2.
CITUS_PORT ?= 55450
CITUS_CLUSTER := target/citus-cluster
# Citus 13.2.2 is built from source kept beside the project (../shared/citus).
CITUS_BUILD ?= $(firstword $(wildcard ../shared/citus/build.sh $(abspath ..)/shared/citus/build.sh /work/shared/citus/build.sh))

RUN_PORT ?= 55432
RUN_CLUSTER := target/run-cluster

# `make regress TESTS=limits` runs one file (after the shared fixtures in setup.sql).
TESTS ?= $(filter-out setup,$(shell sed -n 's/^test: //p' extension/tests/pg_regress/schedule))
REGRESS_TESTS := setup $(TESTS)

.PHONY: help setup install install-release docs-check lint unit-test regress isolation e2e api-test schemathesis \
        upgrade-test test-spi logical-test package package-test client client-test browser-test setup-citus test-citus test test-db test-cluster stop-test-cluster run bench profile instructions soak clean

help:
	@echo "make run    build, install and start tally with a demo user and API"
	@echo "make test   the whole test suite (lint, pgrx, pg_regress, isolation, end-to-end, API)"
	@echo "make bench  benchmarks side by side with their baselines"

# System packages and the pinned cargo-pgrx; every step is skipped when already done.
setup:
	@missing=""; \
	for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo wrk python3-venv openssl chromium; do \
	    dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! command -v npm >/dev/null 2>&1; then \
	    echo "installing nodejs and npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VERSION)"; then \
	    echo "installing cargo-pgrx $(PGRX_VERSION) (a few minutes)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked --quiet; \
	fi
	@if ! grep -qs '^pg15' $(HOME)/.pgrx/config.toml; then \
	    cargo pgrx init --pg15 $(PG_CONFIG) >/dev/null; \
	fi

# cargo pgrx installs the library, the current install script and every upgrade
# script; the install scripts of earlier releases (CREATE EXTENSION tally VERSION
# '0.1.0') are copied beside them.
install: setup
	cargo pgrx install --pg-config $(PG_CONFIG) -p tally
	install -m 644 $(foreach r,$(RELEASES),extension/sql/tally--$(r).sql) $(PG_SHAREDIR)/extension/

install-release: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG) -p tally
	install -m 644 $(foreach r,$(RELEASES),extension/sql/tally--$(r).sql) $(PG_SHAREDIR)/extension/

# The README's, CHANGELOG's and docs/' links, make targets and repository paths exist.
docs-check:
	python3 tests/docs_links.py

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
	scripts/cluster.sh stop $(TEST_CLUSTER)
	scripts/cluster.sh start $(TEST_CLUSTER) $(TEST_PORT) $(TEST_PG_CONF)

stop-test-cluster:
	scripts/cluster.sh stop $(TEST_CLUSTER)

# A fresh database with the extension, for one suite.
define fresh_db
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "DROP DATABASE IF EXISTS $(1)" -c "CREATE DATABASE $(1)" 2>&1 | grep -v NOTICE || true
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d $(1) -c "CREATE EXTENSION tally"
endef

# pg_regress over database $(1), which has the extension: the files $(2), or all.
define run_regress
	mkdir -p target/regress
	$(PGXS_SRC)/test/regress/pg_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/pg_regress --outputdir=target/regress --dbname=$(1) \
	    $(or $(2),$(REGRESS_TESTS)) || { cat target/regress/regression.diffs; exit 1; }
endef

ISOLATION_TESTS = $(shell sed -n 's/^test: //p' extension/tests/isolation/schedule)

# The isolation specs $(2) over database $(1), which has the extension.
define run_isolation
	mkdir -p target/isolation
	$(PGXS_SRC)/test/isolation/pg_isolation_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/isolation --outputdir=target/isolation --dbname=$(1) \
	    $(2) || { cat target/isolation/regression.diffs; exit 1; }
endef

regress: test-cluster
	$(call fresh_db,tally_regress)
	$(call run_regress,tally_regress)

# ALTER EXTENSION tally UPDATE from every earlier release (tests/upgrade.sh), then the
# whole pg_regress suite against a database updated from the oldest one.
upgrade-test: test-cluster
	tests/upgrade.sh $(TEST_URL)/postgres $(VERSION) $(RELEASES)
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "DROP DATABASE IF EXISTS tally_regress_updated" -c "CREATE DATABASE tally_regress_updated"
	psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d tally_regress_updated \
	    -c "CREATE EXTENSION tally VERSION '$(firstword $(RELEASES))'" -c "ALTER EXTENSION tally UPDATE"
	$(call run_regress,tally_regress_updated)

isolation: test-cluster
	$(call fresh_db,tally_isolation)
	$(call run_isolation,tally_isolation,$(ISOLATION_TESTS))

# The correctness suites again with tally.fast_path off, in databases of their own:
# the SPI path, the reference, passes the same pg_regress files, isolation specs and
# randomized, hostile and limit tests as the fast path. Left out: the files about the
# fast path's own bookkeeping (tally.usage.started_bound, kept only by its writes).
FAST_PATH_ONLY_REGRESS := started_bound
FAST_PATH_ONLY_ISOLATION := started_bound_race
SPI_E2E := invariant limits hostile bad_input
test-spi: test-cluster
	$(call fresh_db,tally_regress_spi)
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "ALTER DATABASE tally_regress_spi SET tally.fast_path = off"
	$(call run_regress,tally_regress_spi,$(filter-out $(FAST_PATH_ONLY_REGRESS),$(REGRESS_TESTS)))
	$(call fresh_db,tally_isolation_spi)
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "ALTER DATABASE tally_isolation_spi SET tally.fast_path = off"
	$(call run_isolation,tally_isolation_spi,$(filter-out $(FAST_PATH_ONLY_ISOLATION),$(ISOLATION_TESTS)))
	cargo build -q -p tally-api
	TALLY_TEST_FAST_PATH=off TALLY_TEST_ADMIN_URL=$(TEST_URL)/postgres \
	    cargo test -p tally-e2e --no-fail-fast $(foreach t,$(SPI_E2E),--test $(t)) -- --test-threads=1

# A logical-replication subscriber of tally.plans and tally.session_kinds: its
# connections forget a plan or kind changed by replication (a cluster of its own,
# with wal_level = logical).
LOGICAL_PORT ?= 55437
logical-test:
	tests/logical_subscriber.sh $(LOGICAL_PORT) target/logical-cluster

# Citus, built and installed into PG_CONFIG's PostgreSQL when missing.
setup-citus: setup
	@[ -n "$(CITUS_BUILD)" ] || { echo "Citus source not found: set CITUS_BUILD=/path/to/shared/citus/build.sh" >&2; exit 1; }
	PG_CONFIG=$(PG_CONFIG) $(CITUS_BUILD)

# tally distributed on a local 3-node Citus cluster: the regression files (Citus
# expected outputs in pg_regress/citus_expected), the limit race, the in-place
# distribution of a filled database, the in-place upgrade of a distributed one from
# the newest earlier release and the end-to-end tests, all through the
# coordinator. The nodes preload the library, so they restart after every install.
# The end-to-end tests that hold on Citus too (the others manage clusters of their own,
# or pg_dump, which a distributed tally is not backed up with). The randomized
# invariant test runs 100 operations per connection there (250 on one node): each
# is slower, and its distributed deadlocks wait for Citus's detection.
CITUS_E2E := invariant limits api bad_input hostile security
CITUS_REGRESS := motivating_case write_paths rules periods limits repair grants record_session security
test-citus: install setup-citus
	scripts/citus_cluster.sh stop $(CITUS_CLUSTER)
	scripts/citus_cluster.sh start $(CITUS_CLUSTER) $(CITUS_PORT)
	@trap 'scripts/citus_cluster.sh stop $(CITUS_CLUSTER)' EXIT; \
	tests/citus_regress.sh $(CITUS_PORT) $(CITUS_REGRESS) && \
	tests/citus_race.sh $(CITUS_PORT) && \
	tests/citus_grow.sh $(CITUS_PORT) $(CITUS_CLUSTER) && \
	tests/citus_inplace.sh $(CITUS_PORT) && \
	tests/citus_upgrade.sh $(CITUS_PORT) $(lastword $(RELEASES)) $(VERSION) && \
	cargo build -q -p tally-api && \
	TALLY_SOAK_OPS=100 TALLY_TEST_ADMIN_URL=postgres://postgres@127.0.0.1:$(CITUS_PORT)/postgres TALLY_TEST_CITUS_PORT=$(CITUS_PORT) \
	    cargo test -p tally-e2e --no-fail-fast $(foreach t,$(CITUS_E2E),--test $(t)) -- --test-threads=1 --skip database_down_then_up

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

# Regenerates the TypeScript client's OpenAPI document and types from the API's code.
client:
	cargo build -q -p tally-api
	target/debug/tally-api openapi > clients/typescript/openapi.json
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run generate

# The TypeScript client: generated files current, type-checked, tested under Node
# against the real API.
client-test: test-cluster
	$(call fresh_db,tally_client)
	tests/client_test.sh $(TEST_URL)/tally_client

# The usage page (web/) in headless Chromium against the real API; target/usage-page.png.
browser-test: test-cluster
	$(call fresh_db,tally_browser)
	tests/browser_test.sh $(TEST_URL)/tally_browser

# Debian packages of the extension (postgresql-15-tally) and of tally-api, in target/debian.
package: setup
	cargo pgrx package --pg-config $(PG_CONFIG) -p tally
	cargo build --release -p tally-api
	scripts/package.sh $(VERSION) $(PG_CONFIG) $(RELEASES)

# Installs the extension package into a PostgreSQL without tally (the files of earlier
# installs removed first), runs the pg_regress suite and an update from the oldest
# release against it, checks the API package, removes both packages and installs the
# build under test again.
package-test: package
	rm -f $(PG_PKGLIBDIR)/tally.so $(PG_SHAREDIR)/extension/tally.control $(PG_SHAREDIR)/extension/tally--*.sql
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./target/debian/postgresql-$(PG_MAJOR)-tally_$(VERSION)_*.deb
	dpkg -L postgresql-$(PG_MAJOR)-tally | grep -q '/tally.so$$'
	@$(MAKE) --no-print-directory test-cluster
	$(call fresh_db,tally_package)
	$(call run_regress,tally_package)
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "DROP DATABASE IF EXISTS tally_package_old" -c "CREATE DATABASE tally_package_old"
	psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d tally_package_old \
	    -c "CREATE EXTENSION tally VERSION '$(firstword $(RELEASES))'" -c "ALTER EXTENSION tally UPDATE" \
	    -c "SELECT extversion FROM pg_extension WHERE extname = 'tally'" | grep -q $(VERSION)
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./target/debian/tally-api_$(VERSION)_*.deb
	/usr/bin/tally-api --version | grep -q $(VERSION)
	dpkg -r tally-api postgresql-$(PG_MAJOR)-tally >/dev/null
	test ! -e $(PG_PKGLIBDIR)/tally.so
	@$(MAKE) --no-print-directory install

test: setup docs-check lint unit-test api-test install
	@$(MAKE) --no-print-directory test-cluster
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	$(MAKE) --no-print-directory regress isolation test-spi upgrade-test logical-test e2e schemathesis client-test browser-test package-test
	@$(MAKE) --no-print-directory test-citus

run: install-release
	scripts/demo.sh

bench: install-release
	python3 bench/bench.py

# Where a single-row insert's CPU time goes, tally next to the bare insert (needs perf).
profile: install-release
	@command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
	python3 bench/insert_profile.py

# Instructions per statement under callgrind (bench/instructions.sh), on the
# database make bench left: tally next to its baselines, or two builds of the library
# (LIBS="a.so b.so").
instructions: install-release
	bench/instructions.sh $(or $(ROUNDS),2) $(LIBS)

clean:
	scripts/cluster.sh stop $(TEST_CLUSTER)
	scripts/cluster.sh stop $(RUN_CLUSTER)
	scripts/citus_cluster.sh stop $(CITUS_CLUSTER)
	rm -rf target/citus-cluster target/citus-regress target/test-cluster target/run-cluster target/bench-cluster target/regress target/isolation target/pgrx-test-data target/upgrade target/logical-cluster
