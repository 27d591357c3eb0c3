# The two commands: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: cluster run test tools-build tools-test fmt-check lint web-test web-client unit bench bench-kafka bench-requests fuzz docs

# etcd, Tansu, three nodes and a registry on loopback; Ctrl-C stops them.
cluster: tools-test
	$(CARGO) build --release -p pushcenter
	deploy/local-cluster.sh

# One standalone node on 127.0.0.1:8080; Ctrl-C stops it at once, SIGTERM drains it.
run: tools-build
	$(CARGO) run --release -p pushcenter -- standalone

test: tools-test fmt-check lint web-test unit

# web-client/: type-check and build, unit tests, and the browser bundle compiled into the
# node must be the one this source builds.
NPM_CI = npm ci --no-audit --no-fund --loglevel=error
web-test:
	cd web-client && $(NPM_CI) && npm run build && npm test && npm run check-assets

# Rebuilds web-client/ and refreshes crates/node/assets/pushcenter-client.js.
web-client:
	cd web-client && $(NPM_CI) && npm run build && npm run update-assets

# Rewrites the generated key reference in docs/configuration.md (`pushcenter config-keys`).
docs:
	UPDATE_DOCS=1 $(CARGO) test -p pushcenter --test config_keys the_reference_in_the_docs_is_the_binarys

tools-build:
	@deploy/ensure-tools.sh build

tools-test:
	@deploy/ensure-tools.sh test

fmt-check:
	$(CARGO) fmt --all -- --check

# The binary's feature set holds no test or fuzz hook (they are for tests and benches).
lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@! $(CARGO) tree -p pushcenter -e normal,build -f '{p} {f}' | grep -E 'test-support|fuzzing' \
		|| { echo "lint: the pushcenter binary enables a test or fuzz hook"; exit 1; }

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

bench:
	$(CARGO) bench -p pushcenter-stomp --bench codec
	$(CARGO) bench -p pushcenter-node --bench fanout

# Kafka publish -> client latency on real processes (Tansu, a node, a subscriber).
bench-kafka: tools-test
	$(CARGO) bench -p pushcenter --bench kafka_latency -- $(RATE) $(DURATION)
RATE ?= 10000
DURATION ?= 10

# Cross-node request/reply round trips (Tansu, two nodes, 100 responding clients).
bench-requests: tools-test
	$(CARGO) bench -p pushcenter --bench request_reply -- $(RR_RATE) $(DURATION)
RR_RATE ?= 1000

# Needs cargo-fuzz and a nightly toolchain; see docs/testing.md.
FUZZ_SECONDS ?= 600
fuzz:
	mkdir -p fuzz/corpus/decode fuzz/corpus/session fuzz/corpus/websocket
	cd fuzz && $(CARGO) +nightly fuzz run decode corpus/decode seeds -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run session corpus/session seeds/session -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run websocket corpus/websocket seeds/websocket -- -max_total_time=$(FUZZ_SECONDS)
