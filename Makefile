# The two commands README.md opens with: `make up` and `make test`. `make` alone lists the targets.
.PHONY: help up test topology sagactl bench lint deny fmt localstack-start localstack-stop fault-test deploy destroy
.DEFAULT_GOAL := help

help: ## List the targets (this text).
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { gsub(/\$$\$$/, "$$", $$2); printf "  make %-17s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

up: ## Run LocalStack, the topology, the three services and a sample enrollment (foreground).
	@localstack/up.sh

test: ## Run the whole test suite (starts LocalStack when it is not running).
	@localstack/test.sh

# Where cargo puts what it builds (CARGO_TARGET_DIR, as cargo itself reads it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The one debug build (`make up`, `make test` and the fault suite run the same command, so cargo
# resolves features once and nothing is rebuilt between them).
DEBUG_BUILD := cargo build --quiet --bins

topology: ## Deploy (or update) the messaging stack on $$AWS_ENDPOINT_URL (LocalStack by default).
	@$(DEBUG_BUILD)
	@. localstack/env.sh && $(TARGET_DIR)/debug/sagactl deploy

sagactl: ## Run sagactl against the local LocalStack: make sagactl ARGS='dlq list'.
	@$(DEBUG_BUILD)
	@. localstack/env.sh && $(TARGET_DIR)/debug/sagactl $(ARGS)

bench: ## Pipeline throughput and saga latency against the raw bus (needs LocalStack; see gateway/benches).
	@. localstack/env.sh && localstack/localstack.sh start >/dev/null && cargo bench -p gateway --bench pipeline

lint: ## Formatting, clippy, and cfn-lint on the CloudFormation templates.
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	infra/lint/cfn-lint.sh run

deny: ## Advisory, banned-crate, license and source checks (cargo-deny, installed into .tools/ on first use).
	@.ci/deny

fmt: ## Format the code (cargo fmt).
	cargo fmt --all

localstack-start: ## Start LocalStack in the background (reuses one that answers).
	@localstack/localstack.sh start

localstack-stop: ## Stop the LocalStack that localstack-start started (never another one).
	@localstack/localstack.sh stop

fault-test: ## Fault-injection suite, full profile, on SQLite then PostgreSQL (FAULT_TEST_ARGS adds options).
	@localstack/fault-test.sh --profile full $(FAULT_TEST_ARGS)
	@localstack/fault-test.sh --profile full --backend postgres $(FAULT_TEST_ARGS)

# The one release build: `make deploy` and `make destroy` run the same command, so cargo resolves
# the same features and `make destroy` after `make deploy` builds nothing (`-p infra` alone would
# unify dependency features differently and rebuild most of the dependency graph).
RELEASE_BUILD := cargo build --release --bins

deploy: ## Build release binaries and deploy everything to AWS (or $$AWS_ENDPOINT_URL); see DEPLOY.md.
	$(RELEASE_BUILD)
	$(TARGET_DIR)/release/sagactl deploy-app --bin-dir $(TARGET_DIR)/release $(DEPLOY_ARGS)

destroy: ## Remove everything `make deploy` created; on AWS: make destroy DESTROY_ARGS=--yes (see DEPLOY.md).
	$(RELEASE_BUILD)
	$(TARGET_DIR)/release/sagactl destroy-app $(DESTROY_ARGS)
