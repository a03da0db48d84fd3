#!/usr/bin/env bash
# Installs the Python client and pytest, then runs the client's tests against real
# daemons started from the cnspr binary given as the first argument.
#   bash clients/python/ci.sh target/debug/cnspr [pytest arguments...]
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 PATH/TO/cnspr [pytest arguments...]" >&2
    exit 2
fi
bin=$1
shift
if [ ! -x "$bin" ]; then
    echo "$0: $bin is not an executable cnspr binary" >&2
    exit 2
fi
CNSPR_BIN=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
export CNSPR_BIN

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

# A virtual environment of its own, so nothing is installed into the system Python.
venv=$(mktemp -d "${TMPDIR:-/tmp}/cnspr-py-ci.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check "pytest>=7"
# Installed from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
mkdir "$venv/pkg"
cp -R "$here/pyproject.toml" "$here/README.md" "$here/src" "$venv/pkg/"
"$py" -m pip install --quiet --disable-pip-version-check "$venv/pkg"

# Run from the tests directory against the installed package (not the source tree).
cd "$here/tests"
"$py" -m pytest -p no:cacheprovider -q "$@" .
