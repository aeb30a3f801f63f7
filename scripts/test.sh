#!/usr/bin/env bash
# The whole test suite, slow end-to-end checks included (they run in CI too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh || echo "warning: test dependencies not installed; the browser test will skip" >&2
# The layering contracts (pyproject.toml): the engine imports no Dagster, nothing imports the CLI.
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -ra --durations=20 "$@"
