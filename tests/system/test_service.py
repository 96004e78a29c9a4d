"""The installed service under a real systemd: install.sh in a throwaway root, booted with
systemd-nspawn (private network), against a TLS broker and a pty meter inside the container.

Inside the container, besides the installed tibber-agent.service:
  tibber-test-broker.service  mosquitto with a client-certificate TLS listener on :8883
  tibber-test-meter.service   a simulated eBZ DD3 (agent.meter.simulator from the installed
                              venv) behind a fresh pty at /dev/ttyIRhead, the udev name;
                              one parity-encoded telegram per second
  tibber-agent.service.d/50-test.conf
                              timing only: WatchdogSec=3, RestartSec=1, ordered after both
  tibber-agent-probe.service  a copy of the installed unit (same sandbox) whose ExecStart
                              opens device nodes, to show which ones the sandbox lets through;
  tibber-probe-open.service,  the same with no device policy, and with DevicePolicy=closed and
  tibber-probe-closed.service nothing allowed: the controls that tell a refusal by the device
                              policy apart from one by a missing driver or capability

The container gets a pure cgroup2 hierarchy and the bpf() system call, so that its systemd can
enforce DevicePolicy=/DeviceAllow= with a BPF device program (as on a Pi), not only pretend.
install.sh runs from a snapshot of the checkout taken once per session (helpers), so the
checkout changing during the run cannot make a reinstall look needed.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import NotProven
from tests.system import helpers
from tests.system.helpers import ETC, TEST_IDS, UNIT, VENV, Sandbox

pytestmark = [pytest.mark.system, pytest.mark.needs_machine(why_not=helpers.nspawn_skip_reason)]

PORT = 8883
LINK = "/dev/ttyIRhead"
TEST_DIR = "/etc/tibber-test"
LIB_DIR = "/usr/local/lib/tibber-test"
WATCHDOG_SEC = 3
RESTART_SEC = 1
INSTALL = f"{helpers.SANDBOX_CHECKOUT}/install.sh"
WHEELS_ENV = helpers.sandbox_env(TIBBER_AGENT_WHEELHOUSE=helpers.SANDBOX_WHEELHOUSE)
PUBLISH_BASE = f"$aws/rules/ingest_tibber_bridge_data/tibber-bridge/{TEST_IDS['uid']}/publish"

METER_PY = r'''
"""A simulated eBZ DD3 behind a pty at sys.argv[1]: one 7E1 telegram per second, paced at
9600 baud. When the reader closes the port (the agent restarts), a fresh pty replaces it,
like a replug: a pty cannot always be reopened with new line settings."""
import grp, os, random, select, socket, sys, time, tty

from agent.meter.parity import encode_7e1
from agent.meter.simulator import SimulatedEbz

LINK = sys.argv[1]
BYTE_TIME = 10 / 9600


def notify(text):
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + addr[1:] if addr[0] == "@" else addr)
            s.sendall(text.encode())


def plug():
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    # What 99-tibber-agent.rules does for a real head: group dialout, 0660.
    os.chown(name, 0, grp.getgrnam("dialout").gr_gid)
    os.chmod(name, 0o660)
    os.symlink(name, LINK + ".tmp")
    os.replace(LINK + ".tmp", LINK)
    print("plugged", name, flush=True)
    return master, name


def hung_up(master):
    poll = select.poll()
    poll.register(master, select.POLLIN)
    return any(ev & select.POLLHUP for _fd, ev in poll.poll(0))


meter = SimulatedEbz(rng=random.Random(7))
master, name = plug()
notify("READY=1\nSTATUS=plugged " + name)
was_open, sent = False, 0
while True:
    start = time.monotonic()
    wire = encode_7e1(meter.next_telegram())  # the meter pushes whether anyone listens or not
    if hung_up(master):
        if was_open:  # the reader let go
            os.close(master)
            master, name = plug()
            was_open = False
    else:
        was_open = True
        for i in range(0, len(wire), 16):
            chunk = wire[i:i + 16]
            try:
                os.write(master, chunk)
            except OSError:  # buffer full (reader stopped) or hung up mid-telegram
                break
            time.sleep(len(chunk) * BYTE_TIME)
        sent += 1
        notify(f"STATUS={sent} telegrams to {name}")
    time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
'''

PROBE_PY = r'''
"""Open each device node given and a fresh pty; print one JSON line of errno names."""
import errno, json, os, sys

out = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        out[path] = "OPEN"
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e.errno))
try:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    os.close(os.open(name, os.O_RDWR | os.O_NOCTTY))
    os.close(master)
    out["pty"] = "OPEN"
except OSError as e:
    out["pty"] = errno.errorcode.get(e.errno, str(e.errno))
print("PROBE " + json.dumps(out), flush=True)
'''


def broker_conf() -> str:
    return "\n".join(
        [
            "user root",
            "per_listener_settings false",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            f"listener {PORT}",
            f"cafile {TEST_DIR}/ca.pem",
            f"certfile {TEST_DIR}/server.pem",
            f"keyfile {TEST_DIR}/server.key",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "",
        ]
    )


UNITS = {
    "tibber-test-broker.service": f"""[Unit]
Description=Test broker for tibber-agent (TLS, client certificates)
Before={UNIT}

[Service]
ExecStart=/usr/sbin/mosquitto -c {TEST_DIR}/mosquitto.conf

[Install]
WantedBy=multi-user.target
""",
    "tibber-test-meter.service": f"""[Unit]
Description=Simulated eBZ DD3 behind a pty at {LINK}
Before={UNIT}

[Service]
Type=notify
ExecStart={VENV}/bin/python {LIB_DIR}/meter.py {LINK}

[Install]
WantedBy=multi-user.target
""",
}

# Probe units: the installed unit with probe.py as ExecStart, plus these device lines.
PROBES = {
    "installed": ("tibber-agent-probe.service", ()),
    "unrestricted": ("tibber-probe-open.service", ("DevicePolicy=auto", "DeviceAllow=")),
    # closed: only the standard pseudo devices (/dev/null ...), which any process needs
    "closed": ("tibber-probe-closed.service", ("DevicePolicy=closed", "DeviceAllow=")),
}

AGENT_DROPIN = f"""# tests/system/test_service.py: timing only, the sandbox stays as installed.
[Unit]
Wants=tibber-test-broker.service tibber-test-meter.service
After=tibber-test-broker.service tibber-test-meter.service

[Service]
WatchdogSec={WATCHDOG_SEC}
RestartSec={RESTART_SEC}
"""


def write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)


def wait_for(what: str, probe, timeout: float, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}; last: {last!r}\n{diag()}"
    )


# ---------------------------------------------------------------------------------------
# The booted container
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box(tmp_path_factory):
    source = helpers.checkout_snapshot(tmp_path_factory)
    wheels = helpers.wheelhouse(tmp_path_factory)
    work = tmp_path_factory.mktemp("boot-root")
    sb = Sandbox(
        work / "sb",
        [
            (str(source), helpers.SANDBOX_CHECKOUT, True),
            (str(wheels), helpers.SANDBOX_WHEELHOUSE, True),
        ],
    )
    sb.start()
    try:
        # The user's part: a complete config and the bridge's certificates, then install.sh.
        etc = sb.path(ETC)
        etc.mkdir(mode=0o750)
        ca = helpers.issue_credentials(etc)
        default = (source / "config.ini").read_text()
        write(etc / "config.ini", helpers.complete_config(default, "localhost", meter__port=LINK))
        res = sb.chroot([INSTALL], env=WHEELS_ENV, timeout=300)
        assert res.returncode == 0, res.output
        assert sb.path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}").is_symlink(), (
            "install.sh did not enable the unit:\n" + res.output
        )

        # The test's part: broker, meter, probe, timing drop-in; everything else masked.
        sb.mask_host_units(keep=[UNIT])
        test_dir = sb.path(TEST_DIR)
        server = ca.issue_cert("localhost", "127.0.0.1", "::1")
        observer = ca.issue_cert("observer", common_name="observer")
        write(test_dir / "ca.pem", ca.cert_pem.bytes())
        write(test_dir / "server.pem", b"".join(p.bytes() for p in server.cert_chain_pems))
        write(test_dir / "server.key", server.private_key_pem.bytes(), 0o600)
        write(test_dir / "observer.pem", b"".join(p.bytes() for p in observer.cert_chain_pems))
        write(test_dir / "observer.key", observer.private_key_pem.bytes(), 0o600)
        write(test_dir / "mosquitto.conf", broker_conf())
        write(sb.path(f"{LIB_DIR}/meter.py"), METER_PY)
        write(sb.path(f"{LIB_DIR}/probe.py"), PROBE_PY)
        system = sb.path("/etc/systemd/system")
        for name, text in UNITS.items():
            write(system / name, text)
            (system / "multi-user.target.wants" / name).symlink_to(f"/etc/systemd/system/{name}")
        write(system / f"{UNIT}.d/50-test.conf", AGENT_DROPIN)
        # The probes: the installed unit verbatim, only what it runs (and, for the controls,
        # the device policy) replaced.
        for name, device_lines in PROBES.values():
            write(system / name, (system / UNIT).read_text())
            write(
                system / f"{name}.d/probe.conf",
                "\n".join(
                    [
                        "[Service]",
                        "Type=oneshot",
                        "ExecStart=",
                        f"ExecStart={VENV}/bin/python {LIB_DIR}/probe.py $PROBE_NODES",
                        "WatchdogSec=0",
                        "Restart=no",
                        *device_lines,
                        "",
                    ]
                ),
            )

        # Real GPIO chips (on a Pi) go into the container too.
        gpio = [f"--bind={p}" for p in sorted(map(str, Path("/dev").glob("gpiochip*")))]
        sb.boot(
            extra_args=["--system-call-filter=bpf", *gpio],
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
        )
        yield sb
    finally:
        sb.close()


def diag(sb: Sandbox) -> str:
    parts = [f"--- journal {UNIT}", sb.journal(UNIT)[-6000:]]
    for name in UNITS:
        parts += [f"--- journal {name}", sb.journal(name)[-3000:]]
    return "\n".join(parts)


def agent(sb: Sandbox) -> dict[str, str]:
    return sb.show(
        UNIT,
        "ActiveState",
        "SubState",
        "Result",
        "NRestarts",
        "MainPID",
        "StatusText",
        "ExecMainStatus",
        "Type",
    )


def active(sb: Sandbox) -> dict[str, str] | None:
    props = agent(sb)
    if props["ActiveState"] == "failed":
        raise AssertionError(f"{UNIT} failed: {props}\n{diag(sb)}")
    return props if props["ActiveState"] == "active" else None


# ---------------------------------------------------------------------------------------
# The tests, in order
# ---------------------------------------------------------------------------------------
def test_service_reaches_active_via_ready(box: Sandbox) -> None:
    props = wait_for("active", lambda: active(box), 30, lambda: diag(box))
    # Type=notify: "active" only after READY=1; before it the unit sits in "activating".
    assert props["Type"] == "notify"
    assert props["SubState"] == "running" and props["NRestarts"] == "0"
    user = box.ctl(["stat", "-c", "%U", f"/proc/{props['MainPID']}"]).check().stdout.strip()
    assert user == "tibber-agent"
    assert box.ctl(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"


def test_status_shows_meter_and_tibber_state(box: Sandbox) -> None:
    def good() -> str | None:
        text = agent(box)["StatusText"]
        low = text.lower()
        ok = re.search(r"\bmeter\W+ok\b", low) and re.search(r"\btibber\W+connected\b", low)
        return text if ok else None

    wait_for("STATUS: meter ok, Tibber connected", good, 40, lambda: diag(box))


def test_data_reaches_the_broker(box: Sandbox) -> None:
    res = box.ctl(
        [
            "mosquitto_sub",
            "-h",
            "localhost",
            "-p",
            str(PORT),
            "--cafile",
            f"{TEST_DIR}/ca.pem",
            "--cert",
            f"{TEST_DIR}/observer.pem",
            "--key",
            f"{TEST_DIR}/observer.key",
            "-t",
            "$aws/rules/#",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ],
        timeout=30,
    )
    assert res.returncode == 0, f"nothing published in 20 s: {res.output}\n{diag(box)}"
    topic = res.stdout.split(" ", 1)[0]
    assert topic.startswith(PUBLISH_BASE), res.stdout[:300]
    # The broker saw the agent with its client id and the certificate's CN.
    log = box.journal("tibber-test-broker.service")
    assert re.search(
        rf"New client connected .* as {TEST_IDS['bridge_id']} .*u'{TEST_IDS['bridge_id']}'", log
    ), log[-3000:]


# Device classes the installed unit must refuse, and those it must let through (DeviceAllow=).
# A node of the class is made in the container with the class's major from /proc/devices.
REFUSED = ("ttyS",)  # a serial class the IR head never is
ALLOWED = ("pts", "ttyUSB", "ttyACM", "gpiochip")


@pytest.fixture(scope="module")
def device_access(box: Sandbox) -> dict[str, dict[str, str]]:
    """What each probe unit got opening a node of each class present on this machine (and a
    fresh pty, and the real GPIO chips): {probe: {class or chip: "OPEN" or an errno name}}.

    The same open can fail for reasons other than the device policy: a class with no driver
    here has no major; an absent device answers ENXIO/ENODEV/EIO once the policy lets it
    through; /dev/mem's driver refuses anyone without CAP_SYS_RAWIO with EPERM, policy or
    not (so it proves nothing and is not probed). The controls tell these apart."""
    majors: dict[str, int] = {}
    devices = box.ctl(["cat", "/proc/devices"]).check().stdout
    for line in devices.split("Block devices:")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    nodes = {cls: f"/dev/tibber-probe-{cls}" for cls in (*REFUSED, *ALLOWED) if cls in majors}
    nodes.pop("pts", None)  # the probe opens a fresh pty instead
    for cls, path in nodes.items():
        minor = 64 if cls == "ttyS" else 0  # ttyS0: 4/64
        box.ctl(["rm", "-f", path])
        box.ctl(["mknod", "-m", "0666", path, "c", str(majors[cls]), str(minor)]).check()
    chips = sorted(str(p) for p in Path("/dev").glob("gpiochip*"))
    probe_nodes = " ".join([*nodes.values(), *chips])
    box.ctl(["systemctl", "set-environment", f"PROBE_NODES={probe_nodes}"]).check()
    access: dict[str, dict[str, str]] = {}
    for probe, (unit, _) in PROBES.items():
        res = box.ctl(["systemctl", "start", unit], timeout=60)
        journal = box.ctl(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).output
        assert res.returncode == 0, res.output + journal
        lines = [ln for ln in journal.splitlines() if ln.startswith("PROBE ")]
        assert lines, journal
        seen = json.loads(lines[-1][len("PROBE ") :])
        by_class = {cls: seen[path] for cls, path in nodes.items()}
        by_class["pts"] = seen["pty"]
        by_class.update((chip, seen[chip]) for chip in chips)
        access[probe] = by_class
    return access


@pytest.mark.parametrize("cls", [*REFUSED, *ALLOWED])
def test_device_policy_as_installed(
    box: Sandbox, device_access: dict[str, dict[str, str]], cls: str, not_proven: NotProven
) -> None:
    """DevicePolicy=closed with the unit's DeviceAllow= classes: a refused class gets EPERM,
    an allowed one gets what it gets with no policy at all. Proven only where this machine
    can show it: the class has a driver, nothing else refuses it (the open control), and the
    container enforces device policies (the closed control is refused something the open
    one gets). systemd lets every closed policy open ptys, so for pts the closed control
    proves nothing; that the installed unit opens one is what matters."""
    installed, unrestricted, closed = (device_access[p] for p in PROBES)
    enforced = [n for n in closed if closed[n] == "EPERM" and unrestricted[n] != "EPERM"]
    if not enforced:
        not_proven(f"this container does not enforce device policies: {device_access}")
    if cls not in installed:
        not_proven(
            f"no {cls} driver here ({cls} not in /proc/devices), so DeviceAllow=char-{cls} "
            "cannot be tried"
        )
    names = [cls]
    if cls == "gpiochip":  # and the real chips, on a Pi
        names += [name for name in installed if name.startswith("/dev/gpiochip")]
    for name in names:
        if unrestricted[name] == "EPERM":
            not_proven(f"{name} is refused even with no device policy: something else refuses it")
        if cls in REFUSED:
            assert closed[name] == "EPERM", (name, device_access)  # the policy can refuse it
            assert installed[name] == "EPERM", (name, device_access)
        else:
            assert installed[name] == unrestricted[name], (name, device_access)


def test_watchdog_restarts_a_stopped_agent(box: Sandbox) -> None:
    before = wait_for("active", lambda: active(box), 30, lambda: diag(box))
    assert before["NRestarts"] == "0"
    old = before["MainPID"]
    box.ctl(["kill", "-STOP", old]).check()
    stopped_at = time.monotonic()

    def restarted() -> dict[str, str] | None:
        p = agent(box)
        ok = (
            p["NRestarts"] == "1"
            and p["ActiveState"] == "active"
            and p["MainPID"] not in ("0", old)
        )
        return p if ok else None

    wait_for("a watchdog restart", restarted, WATCHDOG_SEC + RESTART_SEC + 20, lambda: diag(box))
    took = time.monotonic() - stopped_at
    assert took >= WATCHDOG_SEC - 1, f"restarted after {took:.1f} s: not by the watchdog?"
    journal = box.journal(UNIT)
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert "Failed with result 'watchdog'" in journal, journal[-3000:]


def test_config_error_fails_without_restart(box: Sandbox) -> None:
    cfg = box.path(f"{ETC}/config.ini")
    good = cfg.read_text()
    cfg.write_text(helpers.set_ini(good, "tibber", "uid", ""))
    try:
        res = box.ctl(["systemctl", "restart", UNIT], timeout=60)
        assert res.returncode != 0, "a start with an empty uid succeeded"
        props = wait_for(
            "failed",
            lambda: (p := agent(box))["ActiveState"] == "failed" and p,
            15,
            lambda: diag(box),
        )
        time.sleep(RESTART_SEC + 2)  # a restart would have happened by now
        props = agent(box)
        assert props["ActiveState"] == "failed", props
        assert props["Result"] == "exit-code", props
        assert props["ExecMainStatus"] == str(78), props
        assert props["NRestarts"] == "0", props
        assert "[tibber] uid" in box.journal(UNIT)
    finally:
        cfg.write_text(good)


def test_service_recovers_once_the_config_is_fixed(box: Sandbox) -> None:
    box.ctl(["systemctl", "reset-failed", UNIT])
    res = box.ctl(["systemctl", "start", UNIT], timeout=60)
    assert res.returncode == 0, res.output + diag(box)
    assert agent(box)["ActiveState"] == "active"


# ---------------------------------------------------------------------------------------
# install.sh on the running system (systemd up): start, leave alone, uninstall
# ---------------------------------------------------------------------------------------
def live_install(box: Sandbox, *args: str) -> helpers.Result:
    return box.ctl([INSTALL, *args], env=WHEELS_ENV, timeout=300)


def test_install_sh_starts_a_stopped_service(box: Sandbox) -> None:
    box.ctl(["systemctl", "stop", UNIT]).check()
    res = live_install(box)
    assert res.returncode == 0, res.output
    assert re.search(r"systemctl (re)?start tibber-agent.service", res.stdout), res.stdout
    assert agent(box)["ActiveState"] == "active"  # Type=notify: start returned after READY


def test_install_sh_leaves_a_running_service_alone(box: Sandbox) -> None:
    """The same snapshot again: nothing to install, nothing to restart."""
    pid = agent(box)["MainPID"]
    res = live_install(box)
    assert res.returncode == 0, res.output
    assert "installed tibber-agent from" not in res.stdout, res.stdout
    assert "tibber-agent.service: running" in res.stdout, res.stdout
    assert agent(box)["MainPID"] == pid


def test_uninstall_on_the_running_system(box: Sandbox) -> None:
    res = live_install(box, "--uninstall")
    assert res.returncode == 0, res.output
    props = box.show(UNIT, "LoadState", "ActiveState")
    assert props == {"LoadState": "not-found", "ActiveState": "inactive"}, props
    assert box.ctl(["getent", "passwd", "tibber-agent"]).returncode != 0
    assert box.ctl(["test", "-d", VENV]).returncode != 0
    kept = box.ctl(["ls", ETC]).check().stdout.split()
    assert sorted(kept) == ["ca.pem", "certificate.pem", "config.ini", "private.key"], kept
