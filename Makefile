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
