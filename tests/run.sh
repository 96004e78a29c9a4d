#!/usr/bin/env bash
# Installs what the tests need (Debian packages and the project with its test extras) and
# runs the whole suite. Run as root on Debian 12 / Raspberry Pi OS Bookworm:
#   sudo bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # Never name systemd itself here: it is installed, and naming it would upgrade it.
    need=()
    for pkg in mosquitto mosquitto-clients shellcheck systemd-container python3-venv python3-pip \
        faketime; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
    done
    if ((${#need[@]})); then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # The packaged broker would hold port 1883 and is not what the tests use.
    if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
        systemctl stop mosquitto || true
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
ruff check agent tests
ruff format --check agent tests
exec python3 -m pytest "$@"
