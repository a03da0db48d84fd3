#!/usr/bin/env bash
# The web dashboard's browser tests: headless Chromium (Debian's `chromium` and
# `chromium-driver`) driven by Selenium, against real daemons started from the cnspr
# binary given as the first argument. Screenshots go to $UI_ARTIFACTS (default
# /tmp/cnspr-ui-artifacts); the log prints their paths.
#   bash tests/ui/run.sh target/debug/cnspr [pytest arguments...]
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
for tool in chromium chromedriver; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: $tool is missing (apt-get install chromium chromium-driver)" >&2
        exit 2
    fi
done
CNSPR_BIN=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
export CNSPR_BIN
export UI_ARTIFACTS=${UI_ARTIFACTS:-/tmp/cnspr-ui-artifacts}

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
# A virtual environment of its own, so nothing is installed into the system Python.
venv=$(mktemp -d "${TMPDIR:-/tmp}/cnspr-ui-ci.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pytest>=7" "selenium>=4.10"
cd "$here"
"$venv/bin/python" -m pytest -p no:cacheprovider -q -s "$@" test_ui.py
echo "dashboard screenshots: $UI_ARTIFACTS"
