# token-janitor — `make demo` and `make test` do their own set-up: a local
# PostgreSQL 15 with pg_cron (scripts/pg.sh), unless DATABASE_URL is set.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PG := scripts/pg.sh
# The server to use: DATABASE_URL when set, else the local throwaway cluster.
DB = $${DATABASE_URL:-$$($(PG) start)}
# The managed-like server for tests/managed.rs (TLS only, pg_cron in
# 'postgres', a non-superuser deployer): MANAGED_DATABASE_URL when set.
MANAGED_DB = $${MANAGED_DATABASE_URL:-$$($(PG) start-managed)}

.PHONY: test demo bench lint pg-start pg-stop pg-destroy pg-managed-start pg-managed-stop pg-managed-destroy

## test: provision (the usual cluster and the managed-like one), check
## formatting and lints, build, run every test and the documentation's
## examples (nextest does not run doctests)
test: lint
	DATABASE_URL="$(DB)"; export DATABASE_URL; \
	MANAGED_DATABASE_URL="$(MANAGED_DB)"; export MANAGED_DATABASE_URL; \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --no-fail-fast && cargo test --doc; \
	else \
		cargo test --no-fail-fast; \
	fi

## lint: rustfmt and clippy, warnings as errors, with the CLI and as the
## library alone (what an application depending on it builds)
lint:
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --lib --no-default-features --quiet -- -D warnings

## demo: provision, migrate, simulate three days of token traffic, clean up,
## catch a replay, verify; stops the throwaway cluster it started
demo:
	if [ -z "$${DATABASE_URL:-}" ]; then started=1; export DATABASE_URL="$$($(PG) start)"; fi; \
	cargo build --release --quiet --bin token-janitor --example demo; \
	target/release/token-janitor migrate; \
	target/release/examples/demo; \
	target/release/token-janitor verify; \
	if [ -n "$${started:-}" ]; then $(PG) stop; fi

## bench: the purge vs single DELETE and peer shapes, alone and under rotation load
## (1M rows, every heap layout three times, plus the scaling measurement); writes
## target/bench.{json,md,png}
bench:
	export DATABASE_URL="$(DB)"; \
	cargo build --release --quiet --bin token-janitor; \
	target/release/token-janitor bench --rows 1000000 --layout all --repeat 3 --scaling \
		--json target/bench.json --markdown target/bench.md --png target/bench.png

pg-start:
	@$(PG) start
pg-stop:
	@$(PG) stop
pg-destroy:
	@$(PG) destroy
pg-managed-start:
	@$(PG) start-managed
pg-managed-stop:
	@$(PG) stop-managed
pg-managed-destroy:
	@$(PG) destroy-managed
