# shopstream task runner: the README's commands are targets here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help demo test testbed testbed-up testbed-down testbed-status fmt lint

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: ## Run the pipeline locally without Kubernetes; notifications stream here (Ctrl-C stops)
	scripts/demo.sh

test: ## Everything CI runs: test bed up, fmt, clippy, all tests, test bed down
	scripts/test.sh

testbed: ## Install the test bed (Kafka, Kubernetes, kwok, helm) into ~/.cache/shopstream
	testbed/bed.sh install

testbed-up: testbed ## Start the test bed and write target/testbed/env (source it)
	testbed/bed.sh up

testbed-down: ## Stop the test bed
	testbed/bed.sh down

testbed-status: ## Show which test-bed components are up
	testbed/bed.sh status

fmt: ## Format the Rust code
	cargo fmt --all

lint: ## clippy as CI runs it
	cargo clippy --workspace --all-targets --locked -- -D warnings
