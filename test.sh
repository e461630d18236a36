#!/usr/bin/env bash
# The test command. Installs everything the tests need before any test starts (Debian
# packages, nydusd and nydus-image, helm, nerdctl, Dragonfly's scheduler, dfdaemon and dfget,
# and the project into .venv; each once, reused after), lints, then runs the tests. Arguments
# go to pytest.
#
#   ./test.sh            everything, as CI runs it
#   ./test.sh --quick    the quick suite (-m "not slow"): needs only the registry and .venv
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "test.sh: needs Python >= 3.11 as \`$python\` (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

quick=()
if [[ ${1:-} == --quick ]]; then
    shift
    quick=(--quick)
    set -- -m "not slow" "$@"
fi

"$python" -m tests.support.tools install "${quick[@]}"
export PATH="$PWD/.venv/bin:${CARGO_HOME:-$HOME/.cargo}/bin:${GOBIN:-${GOPATH:-$HOME/go}/bin}:$PATH"

ruff check .
ruff format --check .
exec python -m pytest -q "$@"
