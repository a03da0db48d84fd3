#!/bin/sh
# Tests of the example handlers (examples/handlers): shellcheck on the scripts
# when it is installed, then the pytest suite of this directory (pytest is
# installed with pip when missing). Extra arguments go to pytest, e.g.
#   bash tests/handlers/run.sh -k open_url
# HANDLER_TEST_SHELL="bash --posix" (or "busybox sh") runs the scripts with that
# shell instead of /bin/sh.
# Exits non-zero when anything fails.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
status=0

if command -v shellcheck >/dev/null 2>&1; then
    echo "shellcheck: examples/handlers and tests/handlers/run.sh"
    # Every file in examples/handlers is a script.
    find "$repo/examples/handlers" -type f -exec shellcheck -s sh {} + || status=1
    shellcheck -s sh "$here/run.sh" || status=1
else
    echo "run.sh: shellcheck not installed, scripts not checked (apt-get install shellcheck)" >&2
fi

if ! "$python" -m pytest --version >/dev/null 2>&1; then
    echo "run.sh: installing pytest with pip"
    "$python" -m pip install --quiet pytest || {
        echo "run.sh: could not install pytest ($python -m pip install pytest)" >&2
        exit 1
    }
fi

PYTHONDONTWRITEBYTECODE=1 "$python" -m pytest -q -p no:cacheprovider --rootdir "$here" "$here" "$@" ||
    status=1
exit "$status"
