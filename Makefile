# shopstream task runner: the README's commands are targets here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One cargo target directory for every clone, every target and CI (.ci/run sets the same):
# `make demo` after `make test` builds nothing again. Set CARGO_TARGET_DIR to use another.
SHOPSTREAM_CACHE ?= $(HOME)/.cache/shopstream
CARGO_TARGET_DIR ?= $(SHOPSTREAM_CACHE)/cargo-target
export SHOPSTREAM_CACHE CARGO_TARGET_DIR

.PHONY: help bench demo down generate images test testbed testbed-docker testbed-kind testbed-browser testbed-up testbed-down testbed-status up fmt lint

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

up: ## Run shopstream on a local kind cluster: cluster, images, chart, default pipeline Ready
	scripts/cluster.sh up

down: ## Delete the kind cluster of make up
	scripts/cluster.sh down

demo: ## Run the pipeline locally without Kubernetes; notifications stream here (Ctrl-C stops)
	scripts/demo.sh

bench: ## Benchmarks vs a baseline in the same run (release build); writes docs/benchmarks.md
	scripts/bench.sh

test: ## Everything CI runs: test bed up, fmt, clippy, all tests, test bed down
	scripts/test.sh

testbed: ## Install the test bed (Kafka, Kubernetes, kwok, helm) into ~/.cache/shopstream
	testbed/bed.sh install

testbed-docker: ## Install and start the bed's Docker engine and its stand-in base images
	testbed/kafka.sh install
	testbed/docker.sh install
	testbed/docker.sh up

testbed-kind: ## Install kind and the bed's kind node image (with what it is built from)
	SHOPSTREAM_TESTBED_COMPONENTS="kafka kube docker kind" testbed/bed.sh install

testbed-browser: ## Install headless Chromium and chromedriver (Debian packages) for the browser test
	testbed/browser.sh install

images: ## Build the four images from the Dockerfile (shopstream/<binary>:<version>)
	scripts/images.sh build

testbed-up: testbed ## Start the test bed; source "$(testbed/bed.sh env)" to use it
	testbed/bed.sh up

testbed-down: ## Stop the test bed
	testbed/bed.sh down

testbed-status: ## Show which test-bed components are up
	testbed/bed.sh status

CRD_FILES := deploy/crds/shoppipelines.shopstream.dev.yaml charts/shopstream/crds/shoppipelines.shopstream.dev.yaml

generate: ## Regenerate the checked-in ShopPipeline CRD from the Rust types
	@mkdir -p target
	cargo run --quiet -p shop-controller -- crd > target/crd.yaml
	for f in $(CRD_FILES); do cp target/crd.yaml $$f; done

fmt: ## Format the Rust code
	cargo fmt --all

lint: ## clippy as CI runs it
	cargo clippy --workspace --all-targets --locked -- -D warnings
