# tresor build targets.

GO ?= go
GOFMT ?= gofmt
BUF = $(GO) tool -modfile=tools/go.mod buf

# Generated API code (see buf.gen.yaml): Go, gRPC, grpc-gateway, OpenAPI v2.
PROTO_GEN_DIR = proto/tresor
PROTO_GEN_FILES = $(wildcard $(PROTO_GEN_DIR)/*/*.pb.go $(PROTO_GEN_DIR)/*/*.pb.gw.go $(PROTO_GEN_DIR)/*/*.swagger.json)

.PHONY: generate lint-proto check-generate vendor-protos

## generate: regenerate the API code from proto/tresor (buf generate + gofmt).
generate:
	rm -f $(PROTO_GEN_FILES)
	$(BUF) generate
	$(GOFMT) -w $(PROTO_GEN_DIR)

## lint-proto: lint the API protos (buf lint, rules in buf.yaml).
lint-proto:
	$(BUF) lint

## check-generate: fail if the committed generated code is not up to date.
check-generate: generate
	@if [ -z "$$(git ls-files -- proto/)" ]; then \
		echo "check-generate: nothing under proto/ is tracked by git yet; nothing to compare against"; \
		exit 0; \
	fi; \
	git diff --exit-code --stat -- proto/ || { \
		echo "check-generate: generated code under proto/ is out of date; run 'make generate' and commit"; \
		exit 1; \
	}; \
	untracked="$$(git ls-files --others --exclude-standard -- proto/)"; \
	if [ -n "$$untracked" ]; then \
		echo "check-generate: untracked files under proto/; run 'make generate' and commit them:"; \
		echo "$$untracked"; \
		exit 1; \
	fi

## vendor-protos: recreate proto/vendor from the Go modules pinned in tools/go.mod.
vendor-protos:
	cd tools && $(GO) run ./protodump -out ../proto/vendor

# ---------------------------------------------------------------------------
# Build and test.

.PHONY: build test test-deps bench lint ci dev

## build: build the tresor binary into bin/.
build:
	$(GO) build -o bin/tresor ./cmd/tresor

## dev: run tresor on its embedded default (SQLite, SoftHSM2 or a dev key file, local CA).
dev:
	$(GO) run ./cmd/tresor dev

## test-deps: install what the tests need and the machine lacks (SoftHSM2).
test-deps:
	@if ! command -v softhsm2-util >/dev/null 2>&1 || ! { [ -e /usr/lib/softhsm/libsofthsm2.so ] || [ -e /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so ]; }; then \
		echo "installing softhsm2 (tests use a real SoftHSM2 token)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq softhsm2 >/dev/null; \
	fi
	@softhsm2-util --version >/dev/null
	@if ! command -v pg_ctlcluster >/dev/null 2>&1; then \
		echo "installing postgresql (store tests use a real PostgreSQL)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if [ -z "$$TRESOR_TEST_POSTGRES_URL" ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		echo "starting PostgreSQL on 127.0.0.1:5432"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | sort -V | tail -1) main start; \
		for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi
	@[ -n "$$TRESOR_TEST_POSTGRES_URL" ] || pg_isready -h 127.0.0.1 -p 5432

## test: the whole test suite against real SoftHSM2, PostgreSQL and local-kms (installs or starts them when missing).
test: test-deps
	$(GO) test -race -count=1 -timeout 12m ./...

## bench: the benchmarks the README reports.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 3 ./envelope ./kms/pkcs11 ./internal/loadtest ./internal/policy ./internal/authn
	$(GO) test -run '^$$' -bench 'Encrypt1KiB' -benchtime 5s -count 3 ./internal/server
	$(GO) test -run '^$$' -bench RewrapSoftHSM -benchtime 20000x -count 3 ./rotation
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 3 ./fields ./internal/monitor
	$(GO) test -run '^$$' -bench DocumentsGRPC -benchtime 5s -count 3 ./internal/server
	$(GO) test -run '^$$' -bench Record -benchtime 20000x ./internal/audit
	$(GO) test -run '^$$' -bench VerifyMillion -benchtime 1x -count 3 ./internal/audit

# ---------------------------------------------------------------------------
# Soak and fault run (tresor soak; see the README, "Soak and fault run").

.PHONY: soak

# SOAK_DURATION is how long the traffic runs; SOAK_FLAGS adds tresor soak
# flags, such as --clients 8 --seed 1 --json soak.json --keep.
SOAK_DURATION ?= 30m
SOAK_FLAGS ?=

## soak: two replicas on PostgreSQL and SoftHSM2 under mixed traffic and faults for SOAK_DURATION (default 30m), then the final checks.
soak: test-deps
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	$(GO) build -o "$$d/tresor" ./cmd/tresor && \
	"$$d/tresor" soak --duration $(SOAK_DURATION) $(SOAK_FLAGS)

# ---------------------------------------------------------------------------
# Fuzzing (go test -fuzz). Each target's seeds, and any corpus saved under
# its package's testdata/fuzz/, also run in every plain `go test`.

.PHONY: fuzz fuzz-ci

# FUZZTIME is how long each target runs; FUZZPARALLEL, how many workers it
# uses (keep 1 on a two-core machine); FUZZMINIMIZETIME, how long each new
# input is minimized (go's default, 60s, would spend most of a short run
# minimizing the larger seeds: audit logs, schemas, configuration files).
FUZZTIME ?= 1m
FUZZPARALLEL ?= 1
FUZZMINIMIZETIME ?= 5s

# Every fuzz target, as package:FuzzName, one a line (append new ones).
FUZZ_TARGETS += envelope:FuzzParseCiphertext
FUZZ_TARGETS += envelope:FuzzDecodeCiphertext
FUZZ_TARGETS += envelope:FuzzDecrypt
FUZZ_TARGETS += envelope:FuzzDecryptTampered
FUZZ_TARGETS += fields:FuzzParseSchema
FUZZ_TARGETS += fields:FuzzSchemaPath
FUZZ_TARGETS += fields:FuzzProtectDocument
FUZZ_TARGETS += internal/config:FuzzParse
FUZZ_TARGETS += kms/pkcs11:FuzzParseURI
FUZZ_TARGETS += kms/awskms:FuzzParseURI
FUZZ_TARGETS += internal/audit:FuzzVerify
FUZZ_TARGETS += internal/audit:FuzzVerifyTampered
FUZZ_TARGETS += client:FuzzParseHeader
FUZZ_TARGETS += client:FuzzDecrypt
FUZZ_TARGETS += client:FuzzDecryptStream

## fuzz: run every fuzz target for FUZZTIME each (default 1m), one after another.
fuzz:
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz: $$name in ./$$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) -parallel $(FUZZPARALLEL) ./$$pkg || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (crashers are saved under each package's testdata/fuzz/)"; exit 1; fi

## fuzz-ci: every fuzz target briefly (5s each) from its corpus; .ci/run calls it.
fuzz-ci:
	$(MAKE) fuzz FUZZTIME=5s

## lint: gofmt, go vet, buf lint, go.mod tidiness.
lint: lint-proto
	@out=$$($(GOFMT) -l $$(git ls-files '*.go' | grep -v '^tools/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff

## ci: what .ci/run runs.
ci: lint check-generate test fuzz-ci
