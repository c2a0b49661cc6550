# gltoken — make help lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin
PREFIX ?= /usr/local
GOTEST_FLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@if [ -t 1 ]; then c=$$'\033[36m' r=$$'\033[0m'; else c= r=; fi; \
	awk -v c="$$c" -v r="$$r" -v prefix='$(PREFIX)' 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {gsub(/\$$\(PREFIX\)/, prefix, $$2); printf "  %s%-10s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build exchanged and git-credential-gltoken (plus the docker-credential-gltoken link) into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/exchanged ./cmd/git-credential-gltoken
	@ln -sf git-credential-gltoken $(BIN)/docker-credential-gltoken

.PHONY: test
test: ## Run go vet and every test under the race detector; the last line lists what was skipped
	$(GO) vet ./...
	@$(GO) build -o $(BIN)/testsummary ./internal/cmd/testsummary
	set -o pipefail; $(GO) test -race -count=1 -json $(GOTEST_FLAGS) ./... | $(BIN)/testsummary

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

.PHONY: demo
demo: ## Run the whole flow against the GitLab stand-in, in a temporary directory
	$(GO) run ./internal/cmd/demo

.PHONY: bench
bench: ## Run the Go benchmarks and the load driver; print their figures
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./internal/cmd/loadgen

.PHONY: fuzz
fuzz: ## Fuzz the parsers for a while each (FUZZTIME, default 30s)
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' internal | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$t/*_test.go | sed 's/func //'); do \
	    echo "== $$t $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} ./$$t || exit 1; \
	  done; done

.PHONY: crash
crash: ## Kill exchanged with SIGKILL mid-mint for CRASH_ROUNDS rounds (default 100); print the orphan count
	set -o pipefail; GLTOKEN_CRASH_ROUNDS=$${CRASH_ROUNDS:-100} $(GO) test -count=1 -timeout 60m -run '^TestCrashLosesNothing$$' -v ./internal/e2e | grep -E '^(crash test:|--- |ok|FAIL|PASS)|_test\.go:[0-9]+:'

.PHONY: install
install: build ## Install the binaries into $(PREFIX)/bin
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/exchanged $(BIN)/git-credential-gltoken $(DESTDIR)$(PREFIX)/bin/
	ln -sf git-credential-gltoken $(DESTDIR)$(PREFIX)/bin/docker-credential-gltoken

.PHONY: clean
clean: ## Remove build output
	rm -rf $(BIN)
