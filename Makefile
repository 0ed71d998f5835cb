# The two entry points, both safe to run on a fresh Debian bookworm machine
# and again on one that has everything:
#   make demo   installs what is missing, builds, and boots the quickstart
#   make test   installs what is missing and runs every test, VM boots included
SHELL := /bin/bash
GO    ?= go
BIN   := bin
CACHE ?= $(or $(STACK_CACHE_DIR),$(HOME)/.cache/stack)
DEBIAN_IMAGE_DIR ?= $(CACHE)/images/debian-12
export STACK_DEBIAN_IMAGE_DIR := $(DEBIAN_IMAGE_DIR)
FUZZTIME ?= 10s

.PHONY: all deps build guest-image debian-image test test-short vet fuzz examples example-image demo bench bench-switch bench-up bench-boot bench-snapshot bench-cloud-init chaos clean

all: build

deps:
	scripts/deps.sh

build:
	$(GO) build -o $(BIN)/stack ./cmd/stack
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags=-s -o $(BIN)/stack-init ./cmd/stack-init

# The built-in guest image (Debian cloud kernel + our initramfs), cached
# under $(CACHE)/guest by the hash of its inputs.
guest-image: deps build
	$(GO) run ./cmd/stack-image -init $(BIN)/stack-init

# The Debian bookworm image the cloud-init tests and example boot (~3 min
# the first time, cached afterwards).
debian-image: deps
	scripts/build-debian-image.sh $(DEBIAN_IMAGE_DIR)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

# The example OCI image examples/stacks/image.hcl boots, as an OCI layout
# built from this machine's files (no registry).
example-image: deps
	$(GO) run ./examples/images/web examples/images/web/layout

examples: build
	@for f in examples/stacks/*.hcl; do echo "validate $$f"; STACK_VAR_debian_image_dir=$(DEBIAN_IMAGE_DIR) $(BIN)/stack -f $$f validate || exit 1; done

# Every fuzz target runs briefly; `make fuzz FUZZTIME=5m` digs deeper.
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

test: deps guest-image debian-image vet examples
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) chaos CHAOS_ROUNDS=3 CHAOS_SEED=7

test-short: build
	$(GO) test -short -count=1 ./...

demo: deps build guest-image
	scripts/demo.sh

bench: deps guest-image
	$(GO) test -run '^$$' -bench . -benchtime 3x ./stackfile/ ./planner/
	$(GO) test -run '^$$' -bench Boot -benchtime 6x ./hypervisor/qemu/
	$(GO) test -run '^$$' -bench 'BootOverhead|GuestWorkICount' -benchtime 6x ./guestimage/

bench-switch: deps
	$(GO) run ./cmd/bench-switch

# `up` of the quickstart against bare QEMU booting the same VMs, and `up` of
# an unchanged 10-VM stack.
bench-up: deps build guest-image
	$(GO) build -o $(BIN)/bench-up ./cmd/bench-up
	$(BIN)/bench-up -runs 8 -flat cmd/bench-up/testdata/quickstart-flat.hcl

# Boot templates: `up` of one VM and of the quickstart, cold against from
# templates, and the memory of 8 idle VMs each way; the example OCI image's
# web server against the built-in image's.
bench-boot: deps build guest-image example-image
	$(GO) build -o $(BIN)/bench-boot ./cmd/bench-boot
	$(BIN)/bench-boot -runs 6 -image oci:examples/images/web/layout:web

# Snapshots: restoring the quickstart against `up` (templates on and off)
# and against docker-compose up of the same two containers; the Debian
# cloud-init example's restore against its `up`.
bench-snapshot: deps build guest-image debian-image
	$(GO) build -o $(BIN)/bench-snapshot ./cmd/bench-snapshot
	$(BIN)/bench-snapshot -runs 6 -debian $(DEBIAN_IMAGE_DIR)

# `up` to ready of one cloud-init VM against bare QEMU with the same image
# and seed.
bench-cloud-init: deps build debian-image
	$(GO) build -o $(BIN)/bench-up ./cmd/bench-up
	$(BIN)/bench-up -runs 3 -f examples/stacks/cloud-init.hcl --var debian_image_dir=$(DEBIAN_IMAGE_DIR)

# The hardening attack run (docs/troubleshooting.md): CHAOS_ROUNDS rounds of
# a random attack (kill -9 of the supervisor during up, SIGSTOP, corrupt or
# deleted state, concurrent up and down), each recovered and checked;
# prints converged/total, orphans, max supervisor RSS and the time to
# detect a wedge. CHAOS_SEED repeats a run. `make test` runs 3 rounds of
# seed 7 (the seed that found VMMs left without a record by a supervisor
# killed mid-start).
CHAOS_ROUNDS ?= 10
chaos: deps guest-image
	set -o pipefail; STACK_CHAOS_ROUNDS=$(CHAOS_ROUNDS) STACK_CHAOS_SEED=$(CHAOS_SEED) $(GO) test -count=1 -timeout 60m -run '^TestChaos$$' -v ./cmd/stack/app/ | grep -E '^(chaos:|--- |    chaos_e2e_test|ok|FAIL)'

clean:
	rm -rf $(BIN)
