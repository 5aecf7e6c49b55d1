#!/usr/bin/env bash
# Rewrite constraints.txt (the versions CI installs and tests) from a fresh install of today's releases:
#   bash scripts/refresh_constraints.sh && bash .ci/run
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet torch==2.13.0   # the CPU build (see README, Set-up)
"$venv/bin/python" -m pip install --quiet -e ".[dev,export,tracking,search,monai,cluster]"
{
    echo "# The versions CI installs and tests (.ci/run: pip install -c constraints.txt)."
    echo "# Refresh: bash scripts/refresh_constraints.sh (a fresh install of today's releases), then bash .ci/run."
    "$venv/bin/python" -m pip freeze --exclude-editable
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
