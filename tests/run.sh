#!/usr/bin/env bash
# The README's test command. As root on Debian 12 / Raspberry Pi OS Bookworm:
#   sudo bash tests/run.sh [pytest args]
#
# 1. Installs the Debian packages the tests need.
# 2. Makes .venv-test/ in the checkout with Debian's own /usr/bin/python3 and installs the
#    project with its test extras into it (editable). Debian's Python refuses `pip install`
#    (PEP 668, externally-managed-environment), and a venv is what install.sh uses on the Pi
#    too. pip reads this machine's pip configuration as usual (/etc/pip.conf, ~/.config/pip,
#    PIP_* variables). A venv that matches pyproject.toml is reused; a broken one, or one
#    built on another interpreter, is rebuilt.
# 3. Runs ruff and pytest from that venv (TIBBER_TEST_RUNNER=run.sh tells the tests so:
#    tests/test_runner.py then checks that they run on Debian's interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$PWD

# Debian's interpreter and no other: the one the Pi has, and the one the system tests build
# the installer's venvs with. A python3 earlier on PATH (pyenv, conda) is not used.
BASE_PYTHON=/usr/bin/python3
VENV=$CHECKOUT/.venv-test
STAMP=$VENV/tibber-agent-test.stamp

say() { printf 'tests/run.sh: %s\n' "$*"; }
die() {
    printf 'tests/run.sh: %s\n' "$*" >&2
    exit 1
}

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # Never name systemd itself here: it is installed, and naming it would upgrade it.
    # python3-venv brings ensurepip (pip inside the venv); python3-pip is for the system
    # tests, which build a wheelhouse with Debian's pip (`pip wheel` writes no system files).
    need=()
    for pkg in mosquitto mosquitto-clients shellcheck systemd-container python3-venv python3-pip \
        faketime; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
    done
    if ((${#need[@]})); then
        say "apt-get install ${need[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # The packaged broker would hold port 1883 and is not what the tests use.
    if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
        systemctl stop mosquitto || true
    fi
fi

[ -x "$BASE_PYTHON" ] || die "$BASE_PYTHON missing: this runs on Debian's own python3 (apt-get install python3)"
base_real=$(readlink -f "$BASE_PYTHON")
base_version=$("$BASE_PYTHON" -c 'import platform; print(platform.python_version())')

# One run at a time builds the venv; the lock is released before the tests start.
exec 9<"$CHECKOUT/tests/run.sh"
flock 9

# The venv is usable if its interpreter is Debian's (same file, same version) and has pip.
venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] || return 1
    "$VENV/bin/python" - "$base_real" "$base_version" <<'EOF' >/dev/null 2>&1
import os, platform, sys
import pip  # noqa: F401 - a venv without pip cannot be updated
real, version = sys.argv[1:]
ok = (
    sys.prefix != sys.base_prefix
    and os.path.realpath(sys.executable) == real
    and platform.python_version() == version
)
sys.exit(0 if ok else 1)
EOF
}

want="$(sha256sum pyproject.toml | cut -d' ' -f1) $base_real $base_version $CHECKOUT"
if ! venv_ok; then
    [ -e "$VENV" ] && say "$VENV is broken or not built on $BASE_PYTHON: rebuilding it"
    rm -rf "$VENV"
    "$BASE_PYTHON" -m venv "$VENV" ||
        die "could not create $VENV with $BASE_PYTHON (apt-get install python3-venv)"
fi
installed() {
    [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -x "$VENV/bin/ruff" ] &&
        "$VENV/bin/python" -c 'import agent, pytest, trustme' >/dev/null 2>&1
}
if ! installed; then
    say "installing the project with its test extras into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' ||
        die "pip could not install the project into $VENV (see above; pip config: pip config list)"
    printf '%s\n' "$want" >"$STAMP"
fi
say "Python $base_version: $VENV/bin/python -> $base_real (base $BASE_PYTHON)"
flock -u 9
exec 9<&-

"$VENV/bin/ruff" check agent tests scripts bench
"$VENV/bin/ruff" format --check agent tests scripts bench
export TIBBER_TEST_RUNNER=run.sh
exec "$VENV/bin/python" -m pytest "$@"
