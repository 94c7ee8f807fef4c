# Build, test and run the tunnel platform. `make help` lists the targets.

SHELL        := bash
.SHELLFLAGS  := -euo pipefail -c
.DEFAULT_GOAL := help

GO       ?= go
MODULE   := github.com/pipeops/tunnel
BINARIES := pipeops-agent pipeops-gateway pipeops-controlplane
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X $(MODULE)/shared/version.Version=$(VERSION) -X $(MODULE)/shared/version.Commit=$(COMMIT)

# The test kube-apiserver (and kubectl, where none is installed) are built from
# the k8s.io/kubernetes version pinned in the tools module, into a gitignored
# directory keyed by that version: a rebuild happens only when the pin moves.
TOOLS_DIR    := shared/testenv/tools
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2; exit}' $(TOOLS_DIR)/go.mod)
TESTENV_DIR  := .testenv
KUBE_BIN_DIR := $(TESTENV_DIR)/k8s-$(KUBE_VERSION)

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {n++; t[n] = $$1; d[n] = $$2; if (length($$1) > w) w = length($$1)} \
		END {for (i = 1; i <= n; i++) printf "  %-*s  %s\n", w, t[i], d[i]}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build the three binaries into bin/
	@mkdir -p bin
	@for b in $(BINARIES); do \
		echo "go build -> bin/$$b"; \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$$b ./$${b#pipeops-}/cmd/$$b; \
	done

.PHONY: build-all
build-all: ## cross-build into dist/OS_ARCH/ (linux amd64+arm64, darwin/arm64 agent)
	@for target in linux/amd64 linux/arm64; do \
		for b in $(BINARIES); do $(MAKE) --no-print-directory cross TARGET=$$target BIN=$$b; done; \
	done
	@$(MAKE) --no-print-directory cross TARGET=darwin/arm64 BIN=pipeops-agent

.PHONY: cross
cross: ## one cross build: make cross TARGET=linux/arm64 BIN=pipeops-agent
	@os=$${TARGET%/*}; arch=$${TARGET#*/}; out=dist/$${os}_$${arch}/$(BIN); \
	echo "go build ($$os/$$arch) -> $$out"; \
	CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out ./$(patsubst pipeops-%,%,$(BIN))/cmd/$(BIN)

IMAGE_REPO ?= ghcr.io/pipeops
IMAGE_TAG  ?= $(VERSION)
PLATFORMS  ?= linux/amd64,linux/arm64
IMAGES     := agent gateway controlplane

.PHONY: images
images: ## build the three images for linux/amd64 and linux/arm64 with buildx (IMAGE_PUSH=true pushes them)
	@for t in $(IMAGES); do \
		echo "docker buildx build --platform $(PLATFORMS) --target $$t -> $(IMAGE_REPO)/pipeops-$$t:$(IMAGE_TAG)"; \
		docker buildx build --platform $(PLATFORMS) -f deploy/images/Dockerfile --target $$t \
			--build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
			-t $(IMAGE_REPO)/pipeops-$$t:$(IMAGE_TAG) $(if $(filter true,$(IMAGE_PUSH)),--push) . ; \
	done

.PHONY: images-load
images-load: ## build the three images for this machine only, into the local image store
	@for t in $(IMAGES); do \
		docker buildx build --load -f deploy/images/Dockerfile --target $$t \
			--build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
			-t $(IMAGE_REPO)/pipeops-$$t:$(IMAGE_TAG) . ; \
	done

.PHONY: deps
deps: ## install the system packages the tests need (etcd, PostgreSQL, chromium); root or sudo
	@shared/testenv/install-deps.sh

.PHONY: testenv
testenv: $(KUBE_BIN_DIR)/kube-apiserver ## build the test kube-apiserver (and kubectl if missing)
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sfn ../k8s-$(KUBE_VERSION)/kube-apiserver $(TESTENV_DIR)/bin/kube-apiserver
	@if command -v kubectl >/dev/null 2>&1; then \
		rm -f $(TESTENV_DIR)/bin/kubectl; \
	else \
		$(MAKE) --no-print-directory $(KUBE_BIN_DIR)/kubectl; \
		ln -sfn ../k8s-$(KUBE_VERSION)/kubectl $(TESTENV_DIR)/bin/kubectl; \
	fi
	@echo "testenv: kube-apiserver $(KUBE_VERSION) in $(TESTENV_DIR)/bin"

$(KUBE_BIN_DIR)/%:
	@test -n "$(KUBE_VERSION)" || { echo "no k8s.io/kubernetes version in $(TOOLS_DIR)/go.mod" >&2; exit 1; }
	@echo "building $* $(KUBE_VERSION) (about 10-15 minutes cold on 2 cores, seconds when cached)"
	@mkdir -p $(@D); start=$$(date +%s); \
	cd $(TOOLS_DIR) && CGO_ENABLED=0 $(GO) build -trimpath -o $(CURDIR)/$@.tmp ./$*; \
	mv $(CURDIR)/$@.tmp $(CURDIR)/$@; \
	echo "built $@ in $$(( $$(date +%s) - start ))s"

# helm for the chart's tests and `make manifests`, built from source like the
# test kube-apiserver. The -X flags give it what a release build has: its
# version, and its client libraries' Kubernetes version as the default.
HELM_VERSION := v3.22.0
HELM_KUBE    := 1.37
HELM_BIN_DIR := $(TESTENV_DIR)/helm-$(HELM_VERSION)
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$(word 1,$(subst ., ,$(HELM_KUBE))) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(word 2,$(subst ., ,$(HELM_KUBE))) \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$(word 1,$(subst ., ,$(HELM_KUBE))) \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(word 2,$(subst ., ,$(HELM_KUBE)))

$(HELM_BIN_DIR)/helm:
	@echo "building helm $(HELM_VERSION) (about 5 minutes cold on 2 cores, cached afterwards)"
	@mkdir -p $(@D); start=$$(date +%s); \
	GOBIN=$(CURDIR)/$(@D) CGO_ENABLED=0 $(GO) install -trimpath -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	echo "built $@ in $$(( $$(date +%s) - start ))s"

.PHONY: helm
helm: $(HELM_BIN_DIR)/helm ## build helm into .testenv/bin
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sfn ../helm-$(HELM_VERSION)/helm $(TESTENV_DIR)/bin/helm
	@echo "helm: $(HELM_VERSION) in $(TESTENV_DIR)/bin"

# pebble, a small ACME CA for tests, and its challenge test server (a DNS
# server that answers 127.0.0.1 for every name), built from the module proxy
# like helm: the gateway's ACME test gets real certificates from them.
PEBBLE_VERSION := v2.10.3
PEBBLE_BIN_DIR := $(TESTENV_DIR)/pebble-$(PEBBLE_VERSION)

$(PEBBLE_BIN_DIR)/pebble $(PEBBLE_BIN_DIR)/pebble-challtestsrv &:
	@echo "building pebble $(PEBBLE_VERSION) and pebble-challtestsrv (about a minute cold, cached afterwards)"
	@mkdir -p $(PEBBLE_BIN_DIR); start=$$(date +%s); \
	GOBIN=$(CURDIR)/$(PEBBLE_BIN_DIR) CGO_ENABLED=0 $(GO) install -trimpath -ldflags '-s -w' \
		github.com/letsencrypt/pebble/v2/cmd/pebble@$(PEBBLE_VERSION) \
		github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$(PEBBLE_VERSION); \
	echo "built pebble in $$(( $$(date +%s) - start ))s"

.PHONY: pebble
pebble: $(PEBBLE_BIN_DIR)/pebble $(PEBBLE_BIN_DIR)/pebble-challtestsrv ## build pebble and pebble-challtestsrv (the ACME test's CA) into .testenv/bin
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sfn ../pebble-$(PEBBLE_VERSION)/pebble $(TESTENV_DIR)/bin/pebble
	@ln -sfn ../pebble-$(PEBBLE_VERSION)/pebble-challtestsrv $(TESTENV_DIR)/bin/pebble-challtestsrv
	@echo "pebble: $(PEBBLE_VERSION) in $(TESTENV_DIR)/bin"

# promtool for the alerting rules' tests (deploy/compose and deploy/helm run
# `promtool check` and `promtool test rules`), built from the module proxy
# like helm.
PROMTOOL_VERSION := v0.316.0
PROMTOOL_BIN_DIR := $(TESTENV_DIR)/promtool-$(PROMTOOL_VERSION)

$(PROMTOOL_BIN_DIR)/promtool:
	@echo "building promtool $(PROMTOOL_VERSION) (about 5 minutes cold on 2 cores, cached afterwards)"
	@mkdir -p $(@D); start=$$(date +%s); \
	GOBIN=$(CURDIR)/$(@D) CGO_ENABLED=0 $(GO) install -trimpath -ldflags '-s -w' github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION); \
	echo "built $@ in $$(( $$(date +%s) - start ))s"

.PHONY: promtool
promtool: $(PROMTOOL_BIN_DIR)/promtool ## build promtool (the alerting rules' tests) into .testenv/bin
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sfn ../promtool-$(PROMTOOL_VERSION)/promtool $(TESTENV_DIR)/bin/promtool
	@echo "promtool: $(PROMTOOL_VERSION) in $(TESTENV_DIR)/bin"

.PHONY: helm-test
helm-test: helm testenv promtool ## test the Helm charts (agent and server) and the manifests (lint, render, a real API server)
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" $(GO) test -race -count=1 ./deploy/helm/

.PHONY: manifests
manifests: helm ## render deploy/manifests/pipeops-agent.yaml from the Helm chart
	HELM="$(CURDIR)/$(TESTENV_DIR)/bin/helm" deploy/helm/render.sh

# gotestsum runs `go test` and prints a line per package and, at the end,
# every skipped and failed test with the count of each, so that a skip is
# seen, not lost in the output.
GOTESTSUM_VERSION := v1.13.0
GOTESTSUM         := $(TESTENV_DIR)/gotestsum-$(GOTESTSUM_VERSION)/gotestsum

$(GOTESTSUM):
	@echo "building gotestsum $(GOTESTSUM_VERSION) (seconds, cached afterwards)"
	@mkdir -p $(@D)
	GOBIN=$(CURDIR)/$(@D) $(GO) install gotest.tools/gotestsum@$(GOTESTSUM_VERSION)

.PHONY: test
test: deps testenv helm pebble promtool $(GOTESTSUM) ## run every test with -race (installs what it needs first); ends with the skipped and failed tests
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" $(GOTESTSUM) --format pkgname-and-test-fails --format-hide-empty-pkg \
		-- -race -count=1 -timeout 30m ./...

# The whole suite while busy loops hold every core, several times in a row: what a
# shared CI machine does to tests with deadlines sized for an idle one. The loops are
# bounded by BUSY_LIMIT seconds and killed when the target ends, however it ends.
BUSY_RUNS  ?= 3
BUSY_HOGS  ?= $(shell nproc)
BUSY_LIMIT ?= 9000

.PHONY: test-busy
test-busy: deps testenv helm pebble promtool $(GOTESTSUM) ## make test BUSY_RUNS times (3) beside BUSY_HOGS busy loops (one per core); stops at the first failing run
	@mkdir -p $(TESTENV_DIR)/busy; hogs=""; \
	trap 'kill $$hogs 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	for h in $$(seq $(BUSY_HOGS)); do timeout $(BUSY_LIMIT) sh -c 'while :; do :; done' & hogs="$$hogs $$!"; done; \
	echo "test-busy: $(BUSY_HOGS) busy loops started (pids$$hogs), at most $(BUSY_LIMIT) s"; \
	for i in $$(seq $(BUSY_RUNS)); do \
		echo "test-busy: run $$i of $(BUSY_RUNS) started $$(date -u +%H:%M:%S)"; start=$$(date +%s); \
		PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" $(GOTESTSUM) --format pkgname-and-test-fails --format-hide-empty-pkg \
			--jsonfile $(TESTENV_DIR)/busy/run-$$i.json -- -race -count=1 -timeout 60m ./... \
			|| { echo "test-busy: run $$i of $(BUSY_RUNS) FAILED after $$(( $$(date +%s) - start )) s (events in $(TESTENV_DIR)/busy/run-$$i.json)"; exit 1; }; \
		echo "test-busy: run $$i of $(BUSY_RUNS) passed in $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "test-busy: all $(BUSY_RUNS) runs passed"

.PHONY: console-screenshots
console-screenshots: deps testenv ## run the console's browser test and write its screenshots into docs/images/
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" CONSOLE_SCREENSHOTS="$(CURDIR)/docs/images" \
		$(GO) test -count=1 -run 'TestConsole$$' ./e2e/

.PHONY: test-short
test-short: ## run the tests without installing anything; missing environments skip
	$(GO) test -race ./...

# Linters, pinned and built from the module proxy into .testenv like helm.
STATICCHECK_VERSION := v0.8.2
DEADCODE_VERSION    := v0.52.0
LINT_BIN_DIR        := $(TESTENV_DIR)/lint-$(STATICCHECK_VERSION)-$(DEADCODE_VERSION)

$(LINT_BIN_DIR)/staticcheck $(LINT_BIN_DIR)/deadcode &:
	@echo "building staticcheck $(STATICCHECK_VERSION) and deadcode $(DEADCODE_VERSION) (about a minute cold, cached afterwards)"
	@mkdir -p $(LINT_BIN_DIR)
	GOBIN=$(CURDIR)/$(LINT_BIN_DIR) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	GOBIN=$(CURDIR)/$(LINT_BIN_DIR) $(GO) install golang.org/x/tools/cmd/deadcode@$(DEADCODE_VERSION)

.PHONY: lint
lint: $(LINT_BIN_DIR)/staticcheck $(LINT_BIN_DIR)/deadcode ## gofmt, go vet, staticcheck, and no unreachable code (deadcode, tests counted as callers)
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(LINT_BIN_DIR)/staticcheck ./...
	@out=$$($(LINT_BIN_DIR)/deadcode -test ./...); \
	if [ -n "$$out" ]; then echo "unreachable code (delete it, or call it):"; echo "$$out"; exit 1; fi
	shellcheck deploy/install.sh deploy/compose/init-secrets.sh deploy/helm/render.sh shared/testenv/install-deps.sh shared/testenv/fuzz.sh .ci/run
# The tools module is not vetted: vet type-checks all of k8s.io/kubernetes
# (11 minutes cold) for two ten-line mains that `make testenv` compiles.

.PHONY: demo
demo: deps testenv build ## run the whole stack on this machine (until Ctrl-C): tunnel mode, direct mode, kubectl
	@$(GO) build -o bin/pipeops-demo ./shared/stack/cmd/pipeops-demo
	@PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" bin/pipeops-demo -bin bin $(DEMO_FLAGS)

.PHONY: demo-check
demo-check: deps testenv build ## the demo's three checks, then exit (0 only if all passed)
	@$(GO) build -o bin/pipeops-demo ./shared/stack/cmd/pipeops-demo
	@PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" bin/pipeops-demo -bin bin -check

# The load test suite starts the whole stack on loopback and measures each
# scenario through the tunnel next to a direct baseline of the same run
# (loadtest/README.md). Report: loadtest/out/report.json and report.svg.
# Extra flags: make loadtest LOADTEST_FLAGS='-scenarios bulk-single,streams'
.PHONY: loadtest
loadtest: deps testenv ## run the load test suite, full profile (about 5 minutes)
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" $(GO) run ./loadtest -profile full $(LOADTEST_FLAGS)

.PHONY: faults
faults: deps testenv ## the fault suite at full length: control plane down 10 min, a 30-minute soak (about 45 minutes; root, for the network test bed)
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" FAULTS=full $(GO) test -race -count=1 -timeout 90m -v \
		-run 'TestLinkBlackhole|TestControlPlaneDown|TestKill9|TestSlowVisitor|TestPostgresDown|TestSoak' ./e2e/

.PHONY: loadtest-ci
loadtest-ci: deps testenv ## the load test suite's short profile for CI (under 3 minutes); fails on a floor, an error or a leak
	PATH="$(CURDIR)/$(TESTENV_DIR)/bin:$$PATH" $(GO) run ./loadtest -profile ci $(LOADTEST_FLAGS)

# Every fuzz test of the module (the decoders of untrusted input), one after
# the other; a failing input is saved under <package>/testdata/fuzz/
# (docs/testing.md). FUZZTIME is the time per target.
.PHONY: fuzz-ci
fuzz-ci: ## run every fuzz test for 10 s each (what CI runs)
	GO="$(GO)" FUZZTIME=10s shared/testenv/fuzz.sh

.PHONY: fuzz
fuzz: ## run every fuzz test for 3 minutes each (the long run)
	GO="$(GO)" FUZZTIME=3m shared/testenv/fuzz.sh

.PHONY: clean
clean: ## remove build output (keeps the test binaries in .testenv)
	rm -rf bin dist loadtest/out

.PHONY: clean-testenv
clean-testenv: ## remove the built test binaries too
	rm -rf $(TESTENV_DIR)
