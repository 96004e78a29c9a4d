"""install.sh: staged into a DESTDIR (anywhere), and for real in a throwaway copy-on-write root.

The real runs (marked `system`) go through one sandbox in order, the way a user's Pi sees them:
fresh install with the default config -> the same again (nothing changes) -> config completed
(enabled) -> upgrade from a newer checkout (config kept, new keys named) -> --uninstall (only
config and certificates stay) -> install again -> --purge (nothing stays).

pip installs offline from a wheelhouse built once per session (TIBBER_AGENT_WHEELHOUSE; set that
variable yourself to reuse a prebuilt one). The real runs install from a snapshot of the
checkout taken once per session, so work going on in the checkout cannot change their outcome.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import NotProven
from tests.system import helpers
from tests.system.helpers import (
    CHECKOUT,
    ETC,
    INSTALL_SH,
    UNIT,
    UNIT_FILE,
    VENV,
    Sandbox,
    complete_config,
    issue_credentials,
    run,
    set_ini,
)

WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
RULE_PATH = "/etc/udev/rules.d/99-tibber-agent.rules"
MODULES_PATH = "/etc/modules-load.d/tibber-agent.conf"
REQUIRED = ("[tibber] mqtt_url", "[tibber] uid", "[tibber] bridge_id", "[tibber] eui")
FILES = ("ca.pem", "certificate.pem", "private.key")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# =======================================================================================
# DESTDIR staging: no root, no user, no venv; runs anywhere with bash and python3
# =======================================================================================
def staged(destdir: Path, *args: str) -> helpers.Result:
    env = {**os.environ, "DESTDIR": str(destdir)}
    return run(["bash", str(INSTALL_SH), *args], env=env, timeout=60)


def test_destdir_stages_the_files_and_names_what_is_missing(tmp_path: Path) -> None:
    res = staged(tmp_path)
    assert res.returncode == 0, res.output
    assert (tmp_path / UNIT_PATH.lstrip("/")).read_text() == UNIT_FILE.read_text()
    assert (tmp_path / RULE_PATH.lstrip("/")).exists()
    assert "usbserial" in (tmp_path / MODULES_PATH.lstrip("/")).read_text()
    cfg = tmp_path / "etc/tibber-agent/config.ini"
    assert cfg.read_text() == (CHECKOUT / "config.ini").read_text()
    assert mode(cfg) == 0o640 and mode(cfg.parent) == 0o750
    assert not (tmp_path / "opt").exists(), "DESTDIR mode must not build a venv"
    assert not (tmp_path / WANTS.lstrip("/")).exists(), "enabled with an incomplete config"
    for key in REQUIRED:
        assert key in res.stdout
    for name in FILES:
        assert f"/etc/tibber-agent/{name}" in res.stdout
    assert "systemctl enable --now tibber-agent" in res.stdout


def test_destdir_complete_config_is_enabled_and_verifies(
    tmp_path: Path, not_proven: NotProven
) -> None:
    etc = tmp_path / "etc/tibber-agent"
    etc.mkdir(parents=True)
    (etc / "config.ini").write_text(complete_config((CHECKOUT / "config.ini").read_text()))
    issue_credentials(etc)
    res = staged(tmp_path)
    assert res.returncode == 0, res.output
    link = tmp_path / WANTS.lstrip("/")
    assert link.is_symlink() and os.readlink(link) == UNIT_PATH, res.output

    if shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir():
        not_proven("systemd-analyze or the stock units missing: the staged unit is not verified")
    # verify --root needs the stock units inside the root and a real ExecStart file.
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    binary = tmp_path / VENV.lstrip("/") / "bin/tibber-agent"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    ver = run(["systemd-analyze", "verify", f"--root={tmp_path}", UNIT], timeout=60)
    assert ver.returncode == 0 and ver.output.strip() == "", ver.output


def test_destdir_uninstall_keeps_config_purge_removes_it(tmp_path: Path) -> None:
    assert staged(tmp_path).returncode == 0
    (tmp_path / "etc/tibber-agent/private.key").write_text("secret")
    res = staged(tmp_path, "--uninstall")
    assert res.returncode == 0, res.output
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert left == ["etc/tibber-agent/config.ini", "etc/tibber-agent/private.key"], left
    res = staged(tmp_path, "--purge")
    assert res.returncode == 0, res.output
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


# =======================================================================================
# For real, in a throwaway root
# =======================================================================================
# What a run may leave in the upper layer (besides directories that exist on the host).
EXPECTED_PREFIXES = (
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "etc/gshadow",
    "etc/.pwd.lock",
    "etc/subuid",
    "etc/subgid",
    "etc/tibber-agent",
    "etc/systemd/system/tibber-agent.service",
    "etc/systemd/system/multi-user.target.wants/tibber-agent.service",
    "etc/udev/rules.d/99-tibber-agent.rules",
    "etc/modules-load.d/tibber-agent.conf",
    "opt/tibber-agent",
)
# Rewritten by useradd/userdel; after a removal their content must be the host's again.
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/subuid", "etc/subgid")
# useradd/userdel keep the previous file as a backup; not our doing.
SHADOW_BACKUPS = ("etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock")


def changed_paths(sb: Sandbox) -> dict[str, helpers.Entry]:
    """Upper-layer entries that differ from the host: no caches, no copied-up directories."""
    mountpoints = {inside.strip("/") for _host, inside, _ro in sb.binds}
    out = {}
    for rel, entry in sb.snapshot().items():
        if helpers.ignored(rel):
            continue
        if entry.kind == "dir":
            host = Path("/") / rel
            if host.is_dir() and not host.is_symlink():
                continue  # copied up because something below it changed
            if any(m == rel or m.startswith(rel + "/") for m in mountpoints):
                continue  # made by the harness for a bind mount
            if any(p.startswith(rel + "/") for p in EXPECTED_PREFIXES):
                continue  # a parent of ours the host lacks (e.g. no udev installed)
        out[rel] = entry
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What these tests install: the session's snapshot of the checkout."""
    return helpers.checkout_snapshot(tmp_path_factory)


@pytest.fixture(scope="module")
def newer_checkout(tmp_path_factory, source: Path) -> Path:
    """A copy of the snapshot with a change in the package: the 'upgrade'."""
    dst = helpers.copy_checkout(tmp_path_factory.mktemp("upgrade") / "tibber-agent", source=source)
    init = dst / "agent/__init__.py"
    init.write_text(init.read_text() + "\n# upgraded\n")
    return dst


@pytest.fixture(scope="module")
def box(tmp_path_factory, source, newer_checkout):
    wheels = helpers.wheelhouse(tmp_path_factory)
    work = tmp_path_factory.mktemp("install-root")
    binds = [
        # read-only: install.sh must not write into the checkout
        (str(source), helpers.SANDBOX_CHECKOUT, True),
        (str(wheels), helpers.SANDBOX_WHEELHOUSE, True),
        (str(newer_checkout), "/srv/tibber-agent-new", True),
    ]
    sb = Sandbox(work / "sb", binds)
    sb.start()
    sb.env = helpers.sandbox_env(TIBBER_AGENT_WHEELHOUSE=helpers.SANDBOX_WHEELHOUSE)
    try:
        yield sb
    finally:
        sb.close()


def install(sb: Sandbox, *args: str, script: str = f"{helpers.SANDBOX_CHECKOUT}/install.sh"):
    return sb.chroot([script, *args], env=sb.env, timeout=300)


def passwd_entry(sb: Sandbox, name: str) -> list[str] | None:
    for line in sb.path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def sandbox_gid(sb: Sandbox, group: str) -> int | None:
    for line in sb.path("/etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    return None


@pytest.mark.system
@pytest.mark.needs_machine(why_not=helpers.overlay_skip_reason)
class TestInstallForReal:
    """In order: each step starts from the state the previous one left."""

    def test_fresh_install_with_default_config(self, box: Sandbox, source: Path) -> None:
        res = install(box)
        assert res.returncode == 0, res.output

        # the user, in dialout (and gpio where the machine has it)
        entry = passwd_entry(box, "tibber-agent")
        assert entry is not None, "no user tibber-agent"
        assert int(entry[2]) < 1000 and entry[6] == "/usr/sbin/nologin"
        groups = box.chroot(["id", "-nG", "tibber-agent"]).check().stdout.split()
        for group in ("dialout", "gpio"):
            if sandbox_gid(box, group) is not None:
                assert group in groups, groups

        # the venv, on Debian's Python, seeing the apt-installed python3-lgpio
        python = box.path(f"{VENV}/bin/python3")
        assert os.readlink(python) == "/usr/bin/python3"
        assert "include-system-site-packages = true" in box.path(f"{VENV}/pyvenv.cfg").read_text()
        assert box.path(f"{VENV}/bin/tibber-agent").exists()

        # config: root-owned, the service group may read, nobody else
        gid = sandbox_gid(box, "tibber-agent")
        etc, cfg = box.path(ETC), box.path(f"{ETC}/config.ini")
        assert (etc.stat().st_uid, etc.stat().st_gid, mode(etc)) == (0, gid, 0o750)
        assert (cfg.stat().st_uid, cfg.stat().st_gid, mode(cfg)) == (0, gid, 0o640)
        assert cfg.read_text() == (source / "config.ini").read_text()

        # unit, udev rule, modules; not enabled: the config is incomplete
        assert box.path(UNIT_PATH).read_text() == (source / UNIT).read_text()
        rules = source / helpers.UDEV_RULES.relative_to(CHECKOUT)
        assert box.path(RULE_PATH).read_text() == rules.read_text()
        assert box.path(MODULES_PATH).read_text().split()[-2:] == ["usbserial", "cdc_acm"]
        assert not box.path(WANTS).is_symlink()
        for key in REQUIRED:
            assert key in res.stdout
        for name in FILES:
            assert f"{ETC}/{name}" in res.stdout
        assert "systemctl enable --now tibber-agent" in res.stdout

        # nothing but the expected paths changed (the checkout is bound read-only: install.sh
        # builds from a copy of it)
        stray = [p for p in changed_paths(box) if not p.startswith(EXPECTED_PREFIXES)]
        assert stray == [], f"install.sh wrote outside its paths: {stray}"

    def test_agent_runs_in_the_venv(self, box: Sandbox) -> None:
        res = box.chroot([f"{VENV}/bin/tibber-agent", "--help"])
        assert res.returncode == 0, res.output
        assert "run" in res.stdout and "check" in res.stdout

    def test_second_run_changes_nothing(self, box: Sandbox) -> None:
        before = box.snapshot()
        res = install(box)
        assert res.returncode == 0, res.output
        assert helpers.diff_snapshots(before, box.snapshot()) == []
        assert "up to date" in res.stdout and "kept (never overwritten)" in res.stdout

    def test_complete_config_gets_enabled_and_credentials_locked_down(self, box: Sandbox) -> None:
        etc = box.path(ETC)
        cfg = etc / "config.ini"
        cfg.write_text(complete_config(cfg.read_text(), meter__port="/dev/ttyIRhead"))
        issue_credentials(etc)
        for name in FILES:  # as a user might copy them: world-readable, root's group
            os.chown(etc / name, 0, 0)
            os.chmod(etc / name, 0o644)
        res = install(box)
        assert res.returncode == 0, res.output
        link = box.path(WANTS)
        assert link.is_symlink() and os.readlink(link) == UNIT_PATH, res.output
        assert "next boot" in res.stdout  # no systemd running in a chroot
        gid = sandbox_gid(box, "tibber-agent")
        for name in FILES:
            st = (etc / name).stat()
            assert (st.st_uid, st.st_gid) == (0, gid), name
            assert mode(etc / name) & 0o037 == 0 and mode(etc / name) & 0o040, oct(mode(etc / name))
        # idempotent in the enabled state as well
        before = box.snapshot()
        assert install(box).returncode == 0
        assert helpers.diff_snapshots(before, box.snapshot()) == []

    def test_upgrade_keeps_modified_config_and_names_missing_keys(self, box: Sandbox) -> None:
        cfg = box.path(f"{ETC}/config.ini")
        text = set_ini(cfg.read_text(), "tibber", "obis_interval", "5")
        text = set_ini(text, "tibber", "keepalive", None)
        text = set_ini(text, "mirror", "topic", None)
        cfg.write_text(text)
        key_before = box.path(f"{ETC}/private.key").read_bytes()
        stamp_before = box.path(f"{VENV}/.installed-from").read_text()

        res = install(box, script="/srv/tibber-agent-new/install.sh")
        assert res.returncode == 0, res.output
        assert cfg.read_text() == text, "the user's config was changed"
        assert box.path(f"{ETC}/private.key").read_bytes() == key_before
        assert "[tibber] keepalive = 60" in res.stdout
        assert "[mirror] topic = /ebz/raw" in res.stdout
        assert box.path(f"{VENV}/.installed-from").read_text() != stamp_before
        assert "installed tibber-agent from /srv/tibber-agent-new" in res.stdout
        assert box.path(WANTS).is_symlink()

    def test_uninstall_leaves_only_config_and_certificates(self, box: Sandbox) -> None:
        res = install(box, "--uninstall")
        assert res.returncode == 0, res.output
        assert passwd_entry(box, "tibber-agent") is None
        assert sandbox_gid(box, "tibber-agent") is None
        left = changed_paths(box)
        for rel in ACCOUNT_FILES:
            if rel in left:
                assert box.path(rel).read_bytes() == (Path("/") / rel).read_bytes(), rel
                del left[rel]
        rest = sorted(p for p in left if p not in SHADOW_BACKUPS)
        expected = ["etc/tibber-agent"] + [f"etc/tibber-agent/{n}" for n in ("config.ini", *FILES)]
        assert rest == sorted(expected)
        for rel in expected:  # no dangling group id on the credentials
            st = box.path(rel).stat()
            assert (st.st_uid, st.st_gid) == (0, 0), rel
            assert mode(box.path(rel)) & 0o007 == 0, rel

    def test_reinstall_after_uninstall_uses_the_kept_config(self, box: Sandbox) -> None:
        res = install(box)
        assert res.returncode == 0, res.output
        assert "kept (never overwritten)" in res.stdout
        assert box.path(WANTS).is_symlink(), res.output
        gid = sandbox_gid(box, "tibber-agent")
        assert box.path(f"{ETC}/private.key").stat().st_gid == gid

    def test_purge_leaves_nothing(self, box: Sandbox) -> None:
        res = install(box, "--purge")
        assert res.returncode == 0, res.output
        left = changed_paths(box)
        for rel in ACCOUNT_FILES:
            if rel in left:
                assert box.path(rel).read_bytes() == (Path("/") / rel).read_bytes(), rel
                del left[rel]
        assert sorted(p for p in left if p not in SHADOW_BACKUPS) == []
