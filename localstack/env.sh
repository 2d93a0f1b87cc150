# shellcheck shell=bash
# Sourced by the scripts here: standard AWS settings pointing at the local LocalStack, unless the
# caller already set them (then theirs win, so the same scripts can target another endpoint).
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
