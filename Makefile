# callrelay developer targets. `make test` is what CI runs (via .ci/run).

GO       ?= go
FUZZTIME ?= 30s

.PHONY: deps test bench fuzz demo build lint capacity

# Install what the tests need (Go present, redis-server on PATH; NATS is embedded).
deps:
	bash scripts/deps.sh

# Vet, then every test with the race detector against real Redis and NATS.
# Fuzz targets' seed corpora run here as ordinary tests.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

# Benchmarks only (no tests), with allocation counts.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Run each Fuzz target for FUZZTIME (make fuzz FUZZTIME=5m). -fuzz accepts one
# package and one target at a time, hence the loops.
fuzz:
	@set -e; \
	pkgs="$$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...)"; \
	for pkg in $$pkgs; do \
		targets="$$($(GO) test -list '^Fuzz' "$$pkg")"; \
		for target in $$(printf '%s\n' "$$targets" | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) "$$pkg"; \
		done; \
	done

# The relay's knee per core beside the bare reflector: a benchmark, never
# part of test (scripts/capacity.sh says what it does; OUT, RATE, STEP,
# STEPS, RELAY_CPU, GEN_CPU tune it).
capacity:
	bash scripts/capacity.sh

# The demo: a forwarder and simulated, end-to-end encrypted calls on this machine.
demo:
	$(GO) run ./cmd/callrelay demo

# Compile every package.
build:
	$(GO) build ./...

# Fail if any file needs gofmt, then vet.
lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting:"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...
