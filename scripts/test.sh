#!/usr/bin/env bash
# Set up (./.venv with the test extras), run ruff and the test suite. Browser tests of the HTML report need
# Debian's chromium (apt-get install chromium); without it they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
