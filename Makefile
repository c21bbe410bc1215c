# sidemesh — build, run the demo, test (unit + integration + end to end), bench.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/sidemesh/sidemesh/sidecar.Version=$(VERSION)
TOOLS    := bin/tools/consul bin/tools/jaeger bin/tools/h2spec
PKGS     := ./...

.PHONY: all build run test unit vet fmt-check tools fuzz bench bench-xds image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/sidemesh ./cmd/sidemesh

# The embedded demo: sample backends, a sidecar, a short load, the traffic split.
run: build
	./bin/sidemesh demo

# Test tools are Go programs pinned in their own modules (tools/*/go.mod) so
# their dependency trees never touch ours. Built once, cached in bin/tools/.
bin/tools/consul: tools/consul/go.mod tools/consul/go.sum
	cd tools/consul && CGO_ENABLED=0 $(GO) build -trimpath -o ../../bin/tools/consul github.com/hashicorp/consul

bin/tools/jaeger: tools/jaeger/go.mod tools/jaeger/go.sum
	cd tools/jaeger && CGO_ENABLED=0 $(GO) build -trimpath -o ../../bin/tools/jaeger github.com/jaegertracing/jaeger/cmd/jaeger

# h2spec, the HTTP/2 conformance suite run against the HTTP/2 relay.
bin/tools/h2spec: tools/h2spec/go.mod tools/h2spec/go.sum
	cd tools/h2spec && CGO_ENABLED=0 $(GO) build -trimpath -o ../../bin/tools/h2spec github.com/summerwind/h2spec/cmd/h2spec

# iptables (Debian package) for the capture tests of the iptables backend,
# best effort: without it those tests skip with the reason, or fail under
# SIDEMESH_REQUIRE_TOOLS as `make test` sets.
bin/tools/.iptables:
	@mkdir -p bin/tools
	@command -v iptables >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables >/dev/null 2>&1; }; }; } || \
	  echo "note: iptables could not be installed; the iptables-backend capture tests will fail under SIDEMESH_REQUIRE_TOOLS"
	@touch $@

# iproute2 (ip) and util-linux (setpriv) for the tests that run Consul,
# Jaeger and sidecars in pods, network namespaces on a bridge
# (internal/testenv NewPods); without them, or without root, those tests
# skip with the reason, or fail under SIDEMESH_REQUIRE_TOOLS as `make test`
# sets. The stamp is written only once both are there.
bin/tools/.netns:
	@mkdir -p bin/tools
	@for t in ip:iproute2 setpriv:util-linux; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q $${t#*:} >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $${t#*:} >/dev/null 2>&1; }; }; } || \
	  echo "note: $${t%%:*} ($${t#*:}) could not be installed; the tests that need pods will fail under SIDEMESH_REQUIRE_TOOLS"; \
	done
	@command -v ip >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 && touch $@ || true

tools: $(TOOLS) bin/tools/.iptables bin/tools/.netns

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './tools/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# All tests: vet, gofmt, unit and integration tests with -race, and the
# end-to-end tests (e2e/) that drive bin/sidemesh against real Consul and Jaeger.
test: build tools fmt-check vet
	SIDEMESH_REQUIRE_TOOLS=1 SIDEMESH_BIN=$(CURDIR)/bin/sidemesh $(GO) test -race -count=1 -timeout 40m $(PKGS)
	@$(MAKE) --no-print-directory fuzz

# Every Fuzz target in the module, FUZZTIME each; `go test -list` finds
# them, so a target added later runs without an edit here. A failing input
# is saved under the package's testdata/fuzz/ (commit it as a regression seed).
# A count, not a duration: a duration races Go 1.26's fuzz coordinator at
# its deadline and can fail with a bare "context deadline exceeded" and no
# input (golang/go#75804, fixed in Go 1.27); a count has no deadline, and
# the work done does not depend on the machine's speed.
FUZZTIME ?= 2000x
fuzz:
	@list="$$($(GO) test -list '^Fuzz' $(PKGS))" || { echo "$$list"; exit 1; }; \
	echo "$$list" | awk '/^Fuzz/ { names = names " " $$1; next } /^ok/ { if (names != "") print $$2 names; names = "" }' | \
	while read -r pkg names; do \
	  for name in $$names; do \
	    echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" || exit 1; \
	  done; \
	done

unit:
	$(GO) test -race -count=1 $(PKGS)

# Side-by-side benchmark (HTTP/1.1, h2c, gRPC; see bench/README.md) and the Go
# benchmarks: tables, JSON results and a latency chart in bench/results/.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./sidecar/...
	./bench/run.sh

# Control-plane fleet benchmark: `sidemesh xds` with 51 services and 1,000
# simulated sidecars (delta ADS, then state of the world), then 5,000.
bench-xds: build
	$(GO) run ./bench/xdsfleet -bin bin/sidemesh -clients 1000 -services 51
	$(GO) run ./bench/xdsfleet -bin bin/sidemesh -clients 1000 -services 51 -delta=false
	$(GO) run ./bench/xdsfleet -bin bin/sidemesh -clients 5000 -services 51 -changes 2
	$(GO) run ./bench/xdsfleet -bin bin/sidemesh -sidecar

image:
	docker build -t sidemesh:$(VERSION) .

clean:
	rm -rf bin
