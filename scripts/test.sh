#!/usr/bin/env bash
# Set up (./.venv) and run the test suite. Browser tests of the HTML report need Debian's chromium
# (apt-get install chromium); without it they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
