#!/usr/bin/env bash
# install.sh: install, upgrade or remove tibber-agent on a Raspberry Pi (Raspberry Pi OS /
# Debian Bookworm, arm64 or armhf) or any Debian with systemd.
#
#   sudo ./install.sh               install or upgrade (run it again any time: it only
#                                   changes what needs changing)
#   sudo ./install.sh --uninstall   remove it all but /etc/tibber-agent (config, certificates)
#   sudo ./install.sh --purge       remove /etc/tibber-agent as well
#
# What it sets up:
#   apt packages    python3-venv, and python3-lgpio (the LED on Bookworm) where apt has it
#   user            system user tibber-agent, in the groups dialout and gpio where they exist
#   /opt/tibber-agent               venv (Debian's /usr/bin/python3) with the agent from this checkout
#   /etc/tibber-agent/config.ini    from ./config.ini, never overwritten; root:tibber-agent 0640
#   /etc/udev/rules.d/99-tibber-agent.rules   /dev/ttyIRhead for common IR heads
#   /etc/systemd/system/tibber-agent.service  enabled and started once the config is complete
#   /etc/modules-load.d/tibber-agent.conf     usbserial, cdc_acm (see DeviceAllow= in the unit)
#
# Environment:
#   DESTDIR=/path   stage the files under /path only (for tests and packaging): no apt, no
#                   user, no venv, no service start; the unit is enabled inside /path.
#   TIBBER_AGENT_WHEELHOUSE=/dir
#                   install offline: the agent's dependencies and the build backend come
#                   from the wheels in /dir only. Make it on a machine with internet:
#                     pip wheel . -w /dir && pip download 'setuptools>=61' -d /dir
#                   Default: ./wheelhouse in this checkout if it exists, else pip's
#                   configured index (PyPI).
#   TIBBER_AGENT_PYTHON=/usr/bin/python3
#                   the interpreter for the venv; it must live under /usr so the
#                   sandboxed service can run it (not a pyenv or a home directory).
set -euo pipefail

readonly NAME=tibber-agent
readonly UNIT=tibber-agent.service
readonly SVC_USER=tibber-agent
readonly REQUIRED_KEYS="mqtt_url uid bridge_id eui"
readonly FILE_KEYS="ca_cert certificate private_key"
readonly EX_CONFIG=78

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SRC
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
readonly DESTDIR
readonly VENV=/opt/$NAME
readonly ETC=/etc/$NAME
readonly CONFIG=$ETC/config.ini
readonly UNIT_PATH=/etc/systemd/system/$UNIT
readonly WANTS_LINK=/etc/systemd/system/multi-user.target.wants/$UNIT
readonly UDEV_RULE=/etc/udev/rules.d/99-$NAME.rules
readonly MODULES_CONF=/etc/modules-load.d/$NAME.conf
# Loaded at boot, so the unit's DeviceAllow=char-ttyUSB/char-ttyACM classes exist in
# /proc/devices when the service starts, even before the IR head is plugged in.
readonly -a MODULES=(usbserial cdc_acm)
readonly STAMP=$VENV/.installed-from
PYTHON=${TIBBER_AGENT_PYTHON:-/usr/bin/python3}
readonly PYTHON

say() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: sudo $0 [--uninstall | --purge]

  (no option)   install or upgrade tibber-agent from this checkout ($SRC)
  --uninstall   stop and remove the service, the venv, the udev rule, the module list and
                the user;
                keep $ETC (config and certificates)
  --purge       like --uninstall, and remove $ETC too
  -h, --help    this text

Environment: DESTDIR (staging root), TIBBER_AGENT_WHEELHOUSE (offline wheels),
TIBBER_AGENT_PYTHON (venv interpreter, default /usr/bin/python3). See the top of $0.
EOF
}

# A systemd that manages this machine (not a chroot, not a container build, not DESTDIR).
systemd_running() {
    [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

udev_running() {
    [ -z "$DESTDIR" ] && [ -S /run/udev/control ]
}

# Copy $1 to $2 with mode $3 unless it is there already with that content.
# Returns 0 when it wrote the file, 1 when nothing changed.
install_file() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        if [ "$(stat -c %a "$dst")" != "${mode#0}" ]; then
            chmod "$mode" "$dst"
        fi
        return 1
    fi
    install -D -m "$mode" "$src" "$dst"
    return 0
}

# Set owner:group and mode of a path only where they differ, and say so.
ensure_owner_mode() {
    local path=$1 owner=$2 mode=$3 cur_owner cur_mode
    cur_owner=$(stat -c %U:%G "$path")
    cur_mode=$(stat -c %a "$path")
    if [ "$cur_owner" != "$owner" ]; then
        chown "$owner" "$path"
        say "    $path: owner $cur_owner -> $owner"
    fi
    if [ "$cur_mode" != "${mode#0}" ]; then
        chmod "$mode" "$path"
        say "    $path: mode $cur_mode -> ${mode#0}"
    fi
}

# ---------------------------------------------------------------------------------------
# The config: one Python pass (configparser, like the agent) that reports
#   EMPTY <section> <key>          a required key without a value
#   NOFILE <key> <path>            a certificate/key file that is not there
#   FILE <key> <path>              a certificate/key file that is there
#   LACKS <section> <key> <value>  a key of the new default config.ini the file lacks
#   BROKEN <message>               the file cannot be parsed
# Relative file paths resolve against the config's directory; $3 is the root (DESTDIR).
# ---------------------------------------------------------------------------------------
inspect_config() {
    "$PYTHON" - "$1" "$2" "${3:-/}" "$REQUIRED_KEYS" "$FILE_KEYS" <<'PY'
import configparser, os, sys

path, default_path, root, required, file_keys = sys.argv[1:6]

def load(p):
    cp = configparser.ConfigParser(interpolation=None)
    with open(p, encoding="utf-8") as f:
        cp.read_file(f)
    return cp

try:
    cfg = load(path)
except (OSError, UnicodeDecodeError, configparser.Error) as e:
    print("BROKEN", str(e).replace("\n", " "))
    sys.exit(0)

get = lambda k: cfg.get("tibber", k, fallback="").strip()
for key in required.split():
    if not get(key):
        print("EMPTY tibber", key)
base = os.path.dirname(path)
for key in file_keys.split():
    value = get(key)
    if not value:
        print("EMPTY tibber", key)
        continue
    if os.path.isabs(value):
        full = os.path.join(root, value.lstrip("/"))
    else:
        full = os.path.join(base, value)
    print("FILE" if os.path.isfile(full) else "NOFILE", key, full)

if os.path.exists(default_path):
    new = load(default_path)
    for section in new.sections():
        for key, value in new.items(section, raw=True):
            if not cfg.has_option(section, key):
                print("LACKS", section, key, value)
PY
}

# Fill the arrays EMPTY_KEYS, MISSING_FILES, LACKING and BROKEN from the config.
read_config_state() {
    local cfg=$1 kind a b rest
    EMPTY_KEYS=() MISSING_FILES=() LACKING=() BROKEN=""
    while read -r kind a b rest; do
        case $kind in
            EMPTY) EMPTY_KEYS+=("[$a] $b") ;;
            NOFILE) MISSING_FILES+=("$b ($a)") ;;
            LACKS) LACKING+=("[$a] $b = $rest") ;;
            BROKEN) BROKEN="$a $b $rest" ;;
        esac
    done < <(inspect_config "$cfg" "$SRC/config.ini" "${DESTDIR:-/}")
}

# ---------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------
install_apt_packages() {
    local pkg missing=() wanted=()
    for pkg in python3-venv python3-lgpio; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "    python3-venv, python3-lgpio: installed"
        return
    fi
    # Only ask apt for what it has: python3-lgpio comes from the Raspberry Pi OS archive.
    for pkg in "${missing[@]}"; do
        if apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            wanted+=("$pkg")
        elif [ "$pkg" = python3-venv ]; then
            step "apt-get update (python3-venv is not in the package lists)"
            apt-get update -q || die "apt-get update failed"
            wanted+=("$pkg")
        else
            say "    $pkg: not in your apt sources, skipped (on a Pi it comes from the Raspberry Pi OS"
            say "    archive; without it gpiozero uses another pin library or the LED stays off)"
        fi
    done
    if [ ${#wanted[@]} -gt 0 ]; then
        step "apt-get install ${wanted[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${wanted[@]}" ||
            die "apt-get install ${wanted[*]} failed (no network? run 'sudo apt-get update' and retry)"
    fi
}

create_user() {
    local group members
    if getent passwd "$SVC_USER" >/dev/null; then
        say "    user $SVC_USER: exists"
    else
        if getent group "$SVC_USER" >/dev/null; then
            useradd --system --no-log-init --gid "$SVC_USER" --home-dir /nonexistent \
                --no-create-home --shell /usr/sbin/nologin --comment "tibber-agent service" "$SVC_USER"
        else
            useradd --system --no-log-init --user-group --home-dir /nonexistent \
                --no-create-home --shell /usr/sbin/nologin --comment "tibber-agent service" "$SVC_USER"
        fi
        say "    user $SVC_USER: created"
    fi
    for group in dialout gpio; do
        if ! getent group "$group" >/dev/null; then
            say "    group $group: does not exist on this machine, skipped"
            continue
        fi
        members=" $(id -nG "$SVC_USER") "
        if [[ $members == *" $group "* ]]; then
            say "    group $group: $SVC_USER is a member"
        else
            usermod -a -G "$group" "$SVC_USER"
            say "    group $group: added $SVC_USER"
            CHANGED_SOFTWARE=1
        fi
    done
}

# A hash of everything that goes into the installed package, plus the Python version.
source_hash() {
    local p paths=()
    for p in pyproject.toml setup.cfg setup.py README.md LICENSE agent; do
        if [ -e "$SRC/$p" ]; then paths+=("$p"); fi
    done
    {
        "$PYTHON" -c 'import sys; print(sys.version)'
        (cd "$SRC" && find "${paths[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    local want_hash wheelhouse build pip_args=() py_mm venv_mm
    [ -x "$PYTHON" ] || die "$PYTHON not found (set TIBBER_AGENT_PYTHON)"
    case $PYTHON in
        /usr/*) ;;
        *) warn "$PYTHON is outside /usr: the sandboxed service may not be able to run it" ;;
    esac
    py_mm=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -x "$VENV/bin/python" ]; then
        venv_mm=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
        if [ "$venv_mm" != "$py_mm" ]; then
            say "    $VENV: Python ${venv_mm:-?} -> $py_mm, rebuilding the venv"
            rm -rf "$VENV"
        fi
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        rm -rf "$VENV"
        # System site-packages: python3-lgpio (and RPi.GPIO) come from apt, not pip.
        "$PYTHON" -m venv --system-site-packages "$VENV" ||
            die "could not create the venv $VENV (is python3-venv installed?)"
        say "    $VENV: venv created with $PYTHON"
    fi

    want_hash=$(source_hash)
    if [ -x "$VENV/bin/$NAME" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_hash" ]; then
        say "    $VENV: $NAME is up to date"
        return
    fi

    wheelhouse=${TIBBER_AGENT_WHEELHOUSE:-}
    if [ -z "$wheelhouse" ] && [ -d "$SRC/wheelhouse" ]; then
        wheelhouse=$SRC/wheelhouse
    fi
    pip_args=(install --disable-pip-version-check --no-cache-dir --quiet)
    if [ -n "$wheelhouse" ]; then
        [ -d "$wheelhouse" ] || die "TIBBER_AGENT_WHEELHOUSE=$wheelhouse is not a directory"
        pip_args+=(--no-index --find-links "$wheelhouse")
        say "    installing offline from the wheelhouse $wheelhouse"
    fi
    # Build from a copy: pip would leave root-owned build/ and *.egg-info in the checkout.
    build=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $build now
    trap "rm -rf '$build'" EXIT
    tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=.venv-test --exclude=build \
        --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=wheelhouse --exclude=tests \
        --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$build" -xf -
    if ! "$VENV/bin/python" -m pip "${pip_args[@]}" "$build"; then
        die "pip could not install $NAME into $VENV (no internet? use TIBBER_AGENT_WHEELHOUSE)"
    fi
    rm -rf "$build"
    trap - EXIT
    printf '%s\n' "$want_hash" >"$STAMP"
    say "    $VENV: installed $NAME from $SRC"
    CHANGED_SOFTWARE=1
}

# /etc/tibber-agent and config.ini; in DESTDIR mode without owners (the user is not there).
install_config() {
    local dir=$DESTDIR$ETC cfg=$DESTDIR$CONFIG f
    if [ ! -d "$dir" ]; then
        install -d -m 0750 "$dir"
    fi
    if [ -e "$cfg" ]; then
        say "    $CONFIG: kept (never overwritten)"
        CONFIG_IS_NEW=0
    else
        install -m 0640 "$SRC/config.ini" "$cfg"
        say "    $CONFIG: installed the default"
        CONFIG_IS_NEW=1
    fi
    if [ -n "$DESTDIR" ]; then
        return
    fi
    # root-owned, readable by the service group only; nothing writable but by root.
    ensure_owner_mode "$dir" "root:$SVC_USER" 0750
    for f in "$dir"/*; do
        if [ ! -f "$f" ] || [ -L "$f" ]; then continue; fi
        local mode
        mode=$(stat -c %a "$f")
        # Keep tighter modes (0600 for a key is fine for root, but the service needs g+r).
        if [ $((8#$mode & 8#037)) -ne 0 ] || [ $((8#$mode & 8#040)) -eq 0 ]; then
            mode=$(printf '%o' $(((8#$mode & 8#0700) | 8#0040)))
        fi
        ensure_owner_mode "$f" "root:$SVC_USER" "$mode"
    done
}

install_system_files() {
    if install_file "$SRC/$UNIT" "$DESTDIR$UNIT_PATH" 0644; then
        say "    $UNIT_PATH: installed"
        CHANGED_UNIT=1
    else
        say "    $UNIT_PATH: up to date"
    fi
    if install_file "$SRC/udev/99-$NAME.rules" "$DESTDIR$UDEV_RULE" 0644; then
        say "    $UDEV_RULE: installed"
        if udev_running && command -v udevadm >/dev/null; then
            udevadm control --reload || true
            udevadm trigger --subsystem-match=tty --action=add || true
        fi
    else
        say "    $UDEV_RULE: up to date"
    fi
    local tmp
    tmp=$(mktemp)
    printf '# tibber-agent (install.sh): USB-serial IR heads, see tibber-agent.service\n' >"$tmp"
    printf '%s\n' "${MODULES[@]}" >>"$tmp"
    if install_file "$tmp" "$DESTDIR$MODULES_CONF" 0644; then
        say "    $MODULES_CONF: installed"
    else
        say "    $MODULES_CONF: up to date"
    fi
    rm -f "$tmp"
    if systemd_running; then
        # Now as well as at boot (never from a chroot: that would load them into the host).
        modprobe -q -a "${MODULES[@]}" 2>/dev/null ||
            say "    (could not load ${MODULES[*]} now; they load at boot)"
        if [ "$CHANGED_UNIT" = 1 ]; then
            systemctl daemon-reload
        fi
    fi
}

unit_enabled() {
    [ -L "$DESTDIR$WANTS_LINK" ]
}

enable_unit() {
    if unit_enabled; then
        say "    $UNIT: enabled"
        return
    fi
    if systemd_running; then
        systemctl enable "$UNIT"
    elif command -v systemctl >/dev/null && systemctl --root="${DESTDIR:-/}" enable "$UNIT" 2>/dev/null; then
        :
    else
        # No systemctl that works here: the link it would make.
        mkdir -p "$(dirname "$DESTDIR$WANTS_LINK")"
        ln -sfn "$UNIT_PATH" "$DESTDIR$WANTS_LINK"
    fi
    unit_enabled || die "could not enable $UNIT"
    say "    $UNIT: enabled"
}

# Ask the agent itself (as the service user, so file permissions count too). A missing IR
# head is no reason to hold the service back: it waits for the port and says so in STATUS.
# --offline: no connection to Tibber from here (it would throw a bridge or a running agent
# off the broker, and needs a network the install may not have); the service reports it.
agent_check() {
    local out rc=0 problems
    out=$(runuser -u "$SVC_USER" -- "$VENV/bin/$NAME" -c "$CONFIG" check --offline 2>&1) || rc=$?
    case $rc in
        0) return 0 ;;
        "$EX_CONFIG")
            problems=$(printf '%s\n' "$out" | grep -v '\[meter\] port' || true)
            if [ -z "$problems" ]; then
                say "    the IR head is not there yet ($(printf '%s\n' "$out" | sed -n 's/.*\[meter\] port: //p' | head -n 1))"
                say "    the service waits for it; plug it in any time"
                return 0
            fi
            say ""
            say "'$NAME check' found problems:"
            printf '%s\n' "$problems" | sed 's/^/    /'
            return 1
            ;;
        *)
            warn "'$NAME check' did not run (exit $rc); relying on install.sh's own check:"
            printf '%s\n' "$out" | tail -n 5 | sed 's/^/    /' >&2
            return 0
            ;;
    esac
}

how_to_start() {
    say ""
    say "When the config is complete, check it and start the service:"
    say "    sudo -u $SVC_USER $VENV/bin/$NAME -c $CONFIG check"
    say "    sudo systemctl enable --now $NAME"
    say "(or run sudo $0 again). Then: systemctl status $NAME; journalctl -u $NAME -f"
}

report_incomplete() {
    local k
    say ""
    say "The service is installed but NOT enabled or started: $CONFIG is incomplete."
    if [ -n "$BROKEN" ]; then
        say "It cannot be read: $BROKEN"
    fi
    if [ ${#EMPTY_KEYS[@]} -gt 0 ]; then
        say "Fill in these keys (values from your Pulse Bridge's PARAMS page, see the comments in the file):"
        for k in "${EMPTY_KEYS[@]}"; do say "    $k"; done
    fi
    if [ ${#MISSING_FILES[@]} -gt 0 ]; then
        say "Put these files in place (PEM from the bridge's ca_cert, certificate and private_key):"
        for k in "${MISSING_FILES[@]}"; do say "    $k"; done
        say "    then: sudo chown root:$SVC_USER <file>; sudo chmod 0640 <file>"
    fi
    say "Edit it with: sudo nano $CONFIG"
}

start_service() {
    if ! systemd_running; then
        say "    systemd is not running here (chroot/image build): $NAME starts on the next boot"
        return
    fi
    local verb=""
    if ! systemctl is-active --quiet "$UNIT"; then
        verb=start
        # A unit that failed before (e.g. with an incomplete config) may sit in its start limit.
        systemctl reset-failed "$UNIT" 2>/dev/null || true
    elif [ "$CHANGED_SOFTWARE" = 1 ] || [ "$CHANGED_UNIT" = 1 ]; then
        verb=restart
    fi
    if [ -z "$verb" ]; then
        say "    $UNIT: running"
        return
    fi
    step "systemctl $verb $UNIT"
    if ! systemctl "$verb" "$UNIT"; then
        systemctl --no-pager --lines=20 status "$UNIT" || true
        die "$UNIT did not start; see: journalctl -u $NAME"
    fi
    systemctl --no-pager --lines=0 status "$UNIT" | sed -n '1,6p' || true
}

do_install() {
    CHANGED_SOFTWARE=0 CHANGED_UNIT=0 CONFIG_IS_NEW=0
    if [ -n "$DESTDIR" ]; then
        step "staging into DESTDIR=$DESTDIR (files only: no apt, user, venv or service start)"
    else
        [ "$(id -u)" = 0 ] || die "run it as root: sudo $0"
        step "apt packages"
        install_apt_packages
        step "service user"
        create_user
        step "venv $VENV"
        install_venv
    fi
    step "config $ETC"
    install_config
    step "unit, udev rule, kernel modules"
    install_system_files

    read_config_state "$DESTDIR$CONFIG"
    if [ "$CONFIG_IS_NEW" = 0 ] && [ ${#LACKING[@]} -gt 0 ]; then
        local k
        say ""
        say "Your $CONFIG lacks these keys of the new default config"
        say "(the agent uses its defaults for them; add them to change them, see $SRC/config.ini):"
        for k in "${LACKING[@]}"; do say "    $k"; done
    fi

    local complete=1
    if [ -n "$BROKEN" ] || [ ${#EMPTY_KEYS[@]} -gt 0 ] || [ ${#MISSING_FILES[@]} -gt 0 ]; then
        complete=0
        report_incomplete
    elif [ -z "$DESTDIR" ] && ! agent_check; then
        complete=0
    fi
    if [ "$complete" = 0 ]; then
        how_to_start
        return 0
    fi

    step "service"
    enable_unit
    if [ -z "$DESTDIR" ]; then
        start_service
    fi
    say ""
    say "Done. Status: systemctl status $NAME    Logs: journalctl -u $NAME -f"
}

# ---------------------------------------------------------------------------------------
# Uninstall / purge
# ---------------------------------------------------------------------------------------
do_uninstall() {
    local purge=$1 f
    if [ -z "$DESTDIR" ]; then
        [ "$(id -u)" = 0 ] || die "run it as root: sudo $0 --uninstall"
    fi
    step "service"
    if systemd_running; then
        systemctl disable --now "$UNIT" 2>/dev/null || true
    elif command -v systemctl >/dev/null && [ -e "$DESTDIR$UNIT_PATH" ]; then
        systemctl --root="${DESTDIR:-/}" disable "$UNIT" 2>/dev/null || true
    fi
    rm -f "$DESTDIR$WANTS_LINK"
    for f in "$DESTDIR$UNIT_PATH" "$DESTDIR$UDEV_RULE" "$DESTDIR$MODULES_CONF"; do
        if [ -e "$f" ]; then
            rm -f "$f"
            say "    removed $f"
        fi
    done
    if [ -d "$DESTDIR$UNIT_PATH.d" ]; then
        rm -rf "$DESTDIR$UNIT_PATH.d"
        say "    removed $UNIT_PATH.d (local overrides)"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT" 2>/dev/null || true
    fi
    if udev_running && command -v udevadm >/dev/null; then
        udevadm control --reload || true
    fi
    step "venv"
    if [ -d "$DESTDIR$VENV" ]; then
        rm -rf "$DESTDIR$VENV"
        say "    removed $VENV"
    fi

    if [ "$purge" = 1 ]; then
        step "config"
        if [ -d "$DESTDIR$ETC" ]; then
            rm -rf "$DESTDIR$ETC"
            say "    removed $ETC (config and certificates)"
        fi
    elif [ -d "$DESTDIR$ETC" ] && [ -z "$DESTDIR" ]; then
        # The group goes away with the user: hand the credentials to root alone, so that no
        # later group that gets the same id can read them.
        chgrp -R root "$ETC"
        say "    kept $ETC (config and certificates), now root:root; --purge removes it"
    fi

    if [ -z "$DESTDIR" ]; then
        step "user"
        if getent passwd "$SVC_USER" >/dev/null; then
            userdel "$SVC_USER"
            say "    removed user $SVC_USER"
        fi
        if getent group "$SVC_USER" >/dev/null; then
            groupdel "$SVC_USER"
        fi
    fi
    say ""
    say "tibber-agent is uninstalled."
}

main() {
    local mode=install
    while [ $# -gt 0 ]; do
        case $1 in
            --uninstall) mode=uninstall ;;
            --purge) mode=purge ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                usage >&2
                exit 2
                ;;
        esac
        shift
    done
    case $mode in
        install) do_install ;;
        uninstall) do_uninstall 0 ;;
        purge) do_uninstall 1 ;;
    esac
}

main "$@"
