# The two commands README.md opens with: `make up` and `make test`.
.PHONY: up test topology bench lint fmt localstack-start localstack-stop fault-test deploy destroy

up: ## Run LocalStack, the topology, the three services and a sample enrollment (foreground).
	@localstack/up.sh

test: ## Run the whole test suite (starts LocalStack when it is not running).
	@localstack/test.sh

topology: ## Deploy (or update) the messaging stack on $$AWS_ENDPOINT_URL (LocalStack by default).
	@. localstack/env.sh && cargo run --quiet -p infra --bin sagactl -- deploy

bench: ## Pipeline throughput and saga latency against the raw bus (needs LocalStack; see gateway/benches).
	@. localstack/env.sh && localstack/localstack.sh start >/dev/null && cargo bench -p gateway --bench pipeline

lint: ## Formatting, clippy, and cfn-lint on the CloudFormation templates.
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	infra/lint/cfn-lint.sh run

fmt:
	cargo fmt --all

localstack-start:
	@localstack/localstack.sh start

localstack-stop:
	@localstack/localstack.sh stop

fault-test: ## Fault-injection suite, full profile, on SQLite then PostgreSQL (FAULT_TEST_ARGS adds options).
	@localstack/fault-test.sh --profile full $(FAULT_TEST_ARGS)
	@localstack/fault-test.sh --profile full --backend postgres $(FAULT_TEST_ARGS)

# Where cargo puts what it builds (CARGO_TARGET_DIR, as cargo itself reads it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

deploy: ## Build release binaries and deploy everything to AWS (or $$AWS_ENDPOINT_URL); see DEPLOY.md.
	cargo build --release --bins
	$(TARGET_DIR)/release/sagactl deploy-app --bin-dir $(TARGET_DIR)/release $(DEPLOY_ARGS)

destroy: ## Remove everything `make deploy` created; on AWS: make destroy DESTROY_ARGS=--yes (see DEPLOY.md).
	cargo build --release -p infra --bin sagactl
	$(TARGET_DIR)/release/sagactl destroy-app $(DESTROY_ARGS)
