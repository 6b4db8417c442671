# tally — make run | make test | make bench
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# tally builds for PostgreSQL 15 (Debian's) and 18 (built from source kept beside the
# project, ../shared/postgres, when missing). Every PostgreSQL path comes from
# PG_CONFIG, 15's by default: `make install PG_CONFIG=$(PG18_CONFIG)` builds for 18.
PG15_CONFIG := /usr/lib/postgresql/15/bin/pg_config
PG18_CONFIG := /usr/lib/postgresql/18/bin/pg_config
PG_CONFIG ?= $(PG15_CONFIG)
PG18_BUILD ?= $(firstword $(wildcard ../shared/postgres/build.sh $(abspath ..)/shared/postgres/build.sh /work/shared/postgres/build.sh))
# Read when used (not when the Makefile is read), so that a PostgreSQL built by
# `make setup` serves the same make invocation.
pg_config = $(shell $(PG_CONFIG) $(1) 2>/dev/null)
export PG_CONFIG
export PGBIN = $(call pg_config,--bindir)
PGXS_SRC = $(abspath $(dir $(call pg_config,--pgxs))..)
PG_SHAREDIR = $(call pg_config,--sharedir)
PG_PKGLIBDIR = $(call pg_config,--pkglibdir)
PG_MAJOR = $(shell $(PG_CONFIG) --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
# The majors whose PostgreSQL is on this machine, for pgrx (every PG_CONFIG it serves).
PG_MAJORS_HERE = $(foreach m,15 18,$(if $(wildcard $(PG$(m)_CONFIG)),$(m)))
PGRX_VERSION := 0.18.1
export PATH := $(HOME)/.cargo/bin:$(PATH)

# The extension's version, and every earlier release an upgrade is tested from.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' extension/Cargo.toml)
RELEASES := 0.1.0 0.2.0 0.3.0 0.4.0 0.5.0 0.6.0 0.7.0 0.8.0 0.9.0 0.10.0

# Clusters and test output live per major (a data directory belongs to one major).
MAJOR_DIR = target/pg$(PG_MAJOR)
TEST_PORT ?= 55433
TEST_CLUSTER = $(MAJOR_DIR)/test-cluster
TEST_DB := tally_test
TEST_URL := postgres://postgres@127.0.0.1:$(TEST_PORT)
# The test cluster trades durability for speed; benchmarks use their own cluster.
TEST_PG_CONF := "fsync = off" "synchronous_commit = off" "full_page_writes = off"

# make test-citus: a coordinator and two workers on CITUS_PORT, CITUS_PORT+1, +2.
CITUS_PORT ?= 55450
CITUS_CLUSTER = $(MAJOR_DIR)/citus-cluster
# Citus (13.2.2 for 15, 14.0.1 for 18) is built from source kept beside the project
# (../shared/citus).
CITUS_BUILD ?= $(firstword $(wildcard ../shared/citus/build.sh $(abspath ..)/shared/citus/build.sh /work/shared/citus/build.sh))

RUN_PORT ?= 55432
export RUN_CLUSTER = $(MAJOR_DIR)/run-cluster
export BENCH_CLUSTER = $(MAJOR_DIR)/bench-cluster

# `make regress TESTS=limits` runs one file (after the shared fixtures in setup.sql).
TESTS ?= $(filter-out setup,$(shell sed -n 's/^test: //p' extension/tests/pg_regress/schedule))
REGRESS_TESTS := setup $(TESTS)

.PHONY: help setup install install-release docs-check lint unit-test regress isolation e2e api-test schemathesis \
        upgrade-test test-spi logical-test package package-test client client-test browser-test setup-citus test-citus test test-db test-cluster stop-test-cluster run bench profile instructions soak clean \
        setup-pg18 pgrx-init bench-majors test-extension test-api-suites package-test-extension package-regress

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
	@if [ ! -x "$(PG_CONFIG)" ] && [ "$(PG_CONFIG)" = "$(PG18_CONFIG)" ]; then $(MAKE) --no-print-directory setup-pg18; fi
	@$(MAKE) --no-print-directory pgrx-init

# PostgreSQL 18, built from source and installed under /usr/lib/postgresql/18 when
# missing (a few minutes), then known to pgrx beside 15. Its build makes its generated
# headers (utils/errcodes.h, ...) only when its make is the top-level one
# (MAKELEVEL 0), so it runs without this make's MAKELEVEL and MAKEFLAGS.
setup-pg18:
	@[ -x "$(PG18_CONFIG)" ] || { [ -n "$(PG18_BUILD)" ] || { echo "PostgreSQL 18 source not found: set PG18_BUILD=/path/to/shared/postgres/build.sh" >&2; exit 1; }; env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS $(PG18_BUILD); }
	@$(MAKE) --no-print-directory pgrx-init

# pgrx knows every PostgreSQL on this machine (a new make, so that one built just
# before is seen).
pgrx-init:
	@for m in $(PG_MAJORS_HERE); do grep -qs "^pg$$m" $(HOME)/.pgrx/config.toml || missing=1; done; \
	if [ -n "$${missing:-}" ]; then \
	    cargo pgrx init $(foreach m,$(PG_MAJORS_HERE),--pg$(m) $(PG$(m)_CONFIG)) >/dev/null; \
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

# Clippy for each major: the code that differs between them (extension/src/pg/majors.rs)
# is compiled for one at a time.
lint: setup-pg18
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p tally --no-default-features --features pg18 --all-targets -- -D warnings

# #[pg_test] and #[test] functions, in a throwaway cluster managed by cargo-pgrx.
unit-test: setup
	rm -rf $(MAJOR_DIR)/pgrx-test-data
	mkdir -p $(MAJOR_DIR)/pgrx-test-data && chown postgres $(MAJOR_DIR)/pgrx-test-data
	cd extension && cargo pgrx test pg$(PG_MAJOR) --runas postgres --pgdata $(CURDIR)/$(MAJOR_DIR)/pgrx-test-data

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
	mkdir -p $(MAJOR_DIR)/regress
	$(PGXS_SRC)/test/regress/pg_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/pg_regress --outputdir=$(MAJOR_DIR)/regress --dbname=$(1) \
	    $(or $(2),$(REGRESS_TESTS)) || { cat $(MAJOR_DIR)/regress/regression.diffs; exit 1; }
endef

ISOLATION_TESTS = $(shell sed -n 's/^test: //p' extension/tests/isolation/schedule)

# The isolation specs $(2) over database $(1), which has the extension.
define run_isolation
	mkdir -p $(MAJOR_DIR)/isolation
	$(PGXS_SRC)/test/isolation/pg_isolation_regress --use-existing --host=127.0.0.1 --port=$(TEST_PORT) --user=postgres \
	    --inputdir=extension/tests/isolation --outputdir=$(MAJOR_DIR)/isolation --dbname=$(1) \
	    $(2) || { cat $(MAJOR_DIR)/isolation/regression.diffs; exit 1; }
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
	tests/logical_subscriber.sh $(LOGICAL_PORT) $(MAJOR_DIR)/logical-cluster

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

# Debian packages: the extension for each major (postgresql-15-tally and
# postgresql-18-tally, each installing into its own PostgreSQL) and tally-api once,
# in target/debian.
PACKAGE_CONFIGS = $(PG15_CONFIG) $(PG18_CONFIG)
package: setup setup-pg18
	$(foreach c,$(PACKAGE_CONFIGS),cargo pgrx package --pg-config $(c) -p tally &&) true
	cargo build --release -p tally-api
	scripts/package.sh $(VERSION) "$(PACKAGE_CONFIGS)" $(RELEASES)

# Each extension package installed into its PostgreSQL (package-test-extension), then
# the API package, then the builds under test installed again.
package-test: package
	$(foreach c,$(PACKAGE_CONFIGS),$(MAKE) --no-print-directory package-test-extension PG_CONFIG=$(c) &&) true
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./target/debian/tally-api_$(VERSION)_*.deb
	/usr/bin/tally-api --version | grep -q $(VERSION)
	dpkg -r tally-api >/dev/null

# The package of PG_CONFIG's major installed into a PostgreSQL without tally (the
# files of earlier installs removed first): the other major's tally stays as it
# was; the pg_regress suite and an update from the oldest release pass against it;
# removing it removes its library; the build under test is installed again.
package-test-extension:
	rm -f $(PG_PKGLIBDIR)/tally.so $(PG_SHAREDIR)/extension/tally.control $(PG_SHAREDIR)/extension/tally--*.sql
	others="$(foreach c,$(filter-out $(PG_CONFIG),$(PACKAGE_CONFIGS)),$$($(c) --pkglibdir)/tally.so)"; \
	before=$$(md5sum $$others 2>/dev/null || true); \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./target/debian/postgresql-$(PG_MAJOR)-tally_$(VERSION)_*.deb; \
	[ "$$(md5sum $$others 2>/dev/null || true)" = "$$before" ] || { echo "installing postgresql-$(PG_MAJOR)-tally changed another major's tally" >&2; exit 1; }
	dpkg -L postgresql-$(PG_MAJOR)-tally | grep -q '^$(PG_PKGLIBDIR)/tally.so$$'
	@$(MAKE) --no-print-directory test-cluster
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	$(MAKE) --no-print-directory package-regress
	dpkg -r postgresql-$(PG_MAJOR)-tally >/dev/null
	test ! -e $(PG_PKGLIBDIR)/tally.so
	@$(MAKE) --no-print-directory install

package-regress:
	$(call fresh_db,tally_package)
	$(call run_regress,tally_package)
	psql -X -q -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d postgres -c "DROP DATABASE IF EXISTS tally_package_old" -c "CREATE DATABASE tally_package_old"
	psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $(TEST_PORT) -U postgres -d tally_package_old \
	    -c "CREATE EXTENSION tally VERSION '$(firstword $(RELEASES))'" -c "ALTER EXTENSION tally UPDATE" \
	    -c "SELECT extversion FROM pg_extension WHERE extname = 'tally'" | grep -q $(VERSION)

# The suites that exercise the extension, for PG_CONFIG's major: pgrx tests,
# pg_regress, isolation, both counting paths, upgrades, a logical subscriber, the
# end-to-end tests and Citus.
test-extension: unit-test install
	@$(MAKE) --no-print-directory test-cluster
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	$(MAKE) --no-print-directory regress isolation test-spi upgrade-test logical-test e2e
	@$(MAKE) --no-print-directory test-citus

# The suites of the API's clients (generated requests, the TypeScript client, the page
# in Chromium): they reach PostgreSQL only through the API and the SQL the other
# suites cover on every major, so they run on one.
test-api-suites: install
	@$(MAKE) --no-print-directory test-cluster
	@trap '$(MAKE) --no-print-directory stop-test-cluster' EXIT; \
	$(MAKE) --no-print-directory schemathesis client-test browser-test

# Everything, on PostgreSQL 15 and 18.
test: setup setup-pg18 docs-check lint api-test
	@$(MAKE) --no-print-directory test-extension test-api-suites PG_CONFIG=$(PG15_CONFIG)
	@$(MAKE) --no-print-directory test-extension PG_CONFIG=$(PG18_CONFIG)
	@$(MAKE) --no-print-directory package-test

run: install-release
	scripts/demo.sh

# Every workload, on PG_CONFIG's major (results in target/pg<major>/bench).
bench: install-release
	python3 bench/bench.py

# The single-row workload and the 1M-row COPY on PostgreSQL 15 and then on 18, each
# against its own baselines on its own cluster (docs/performance.md).
bench-majors:
	$(MAKE) --no-print-directory bench PG_CONFIG=$(PG15_CONFIG) BENCH_ONLY=single,bulk BENCH_BULK=copy_1000000
	$(MAKE) --no-print-directory bench PG_CONFIG=$(PG18_CONFIG) BENCH_ONLY=single,bulk BENCH_BULK=copy_1000000
	python3 bench/bench.py --markdown target/pg15/bench/results-bulk-single.json target/pg18/bench/results-bulk-single.json

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
	rm -rf target/pg15 target/pg18 target/citus-regress target/upgrade target/debian
