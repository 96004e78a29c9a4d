"""What import-bridge writes, where, with which mode and group; checked before, backed up.

Everything lands next to the config file (`-c`, default /etc/tibber-agent/config.ini):
- the three PEM files under the names the config already gives them (else the defaults
  ca.pem, certificate.pem, private.key): certificates 0644; the key 0640 with the service's
  group when that group exists (the agent runs as `tibber-agent`, install.sh), else 0600;
- node-metrics.json (and bridge-metrics.json) when a template passed the agent's check: like
  the key (a bridge's metrics name the Wi-Fi and the MACs);
- bridge-status.json, the bridge's /status.json kept for reference: like the key (it names
  the Wi-Fi and the LAN addresses);
- config.ini, its [tibber] section edited in place (inifile): an existing file keeps its
  mode, owner and group; a new one is made like the key.

Before anything is written, the planned [tibber] section, PEMs and templates are put in a
private scratch directory and read back by the agent's own loader and TLS check
(`config.load`, `check_files`, `credentials.check_tls`): import-bridge never writes a config
that `tibber-agent check` would refuse for its [tibber] part. A file that would change is
first copied to `<name>.bak-<YYYYmmdd-HHMMSS>` with its mode, owner and group; a file whose
content, mode and group are already right is left alone, so a second run changes nothing.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, check_files, load
from ..credentials import check_tls
from . import inifile
from .extract import Harvest

PUBLIC = 0o644
PRIVATE_TO_GROUP = 0o640
PRIVATE = 0o600
PEM_DEFAULTS = {"ca_cert": "ca.pem", "certificate": "certificate.pem", "private_key": "private.key"}
TEMPLATE_DEFAULTS = {
    "node_metrics_template": "node-metrics.json",
    "bridge_metrics_template": "bridge-metrics.json",
}
STATUS_NAME = "bridge-status.json"
DESCRIPTIONS = {
    "ca_cert": "CA certificate",
    "certificate": "client certificate",
    "private_key": "private key",
    "node_metrics_template": "node metrics template",
    "bridge_metrics_template": "bridge metrics template",
    "status": "the bridge's /status.json, for reference",
    "config": "[tibber] section; other sections and comments kept",
}


class ConfigFileError(Exception):
    """The existing config cannot be read or edited: one line (exit 78)."""


class StagedCheckError(Exception):
    """The planned [tibber] part fails the agent's own check: one line (exit 65)."""


@dataclass(frozen=True)
class Target:
    role: str  # a key of DESCRIPTIONS
    path: Path
    content: bytes
    private: bool
    keep_owner: bool = False  # config.ini: an existing file keeps its mode, owner, group


@dataclass(frozen=True)
class Step:
    target: Target
    mode: int
    gid: int  # -1: leave as created / as it is
    state: str  # "new", "unchanged", "replaced", "mode"
    uid: int = -1

    def describe(self) -> str:
        group = f" group {_group_name(self.gid)}" if self.gid >= 0 else ""
        return f"{self.target.path}  {self.mode:04o}{group}  {DESCRIPTIONS[self.target.role]}"


@dataclass(frozen=True)
class Plan:
    config: Path
    directory_missing: bool
    steps: list[Step]
    tibber: dict[str, str]  # the [tibber] keys set
    gid: int = -1  # the service's group; -1 where it does not exist


def plan(config: Path, harvest: Harvest, status: bytes | None, group: str) -> Plan:
    """Where each file goes and in which state it finds its place. Reads, writes nothing."""
    text = _read_config(config)
    existing = inifile.check(text, str(config)) if text else None
    current = dict(existing["tibber"]) if existing and existing.has_section("tibber") else {}
    base = config.parent
    gid = _group_id(group)

    tibber = dict(harvest.tibber)
    targets: list[Target] = []
    for key, block in harvest.pems.items():
        name = _beside(base, current.get(key, "").strip(), PEM_DEFAULTS[key])
        tibber[key] = name
        private = key == "private_key"
        targets.append(Target(key, _resolve(base, name), block.text.encode("ascii"), private))
    templates = {
        "node_metrics_template": harvest.node_template,
        "bridge_metrics_template": harvest.bridge_template,
    }
    for key, doc in templates.items():
        if doc is None:
            continue  # an existing setting stays as it is
        name = _beside(base, current.get(key, "").strip(), TEMPLATE_DEFAULTS[key])
        tibber[key] = name
        # A bridge metrics document names the Wi-Fi (ssid, bssid) and the MACs: kept like
        # the key, readable by the service's group.
        targets.append(Target(key, _resolve(base, name), doc.body, private=True))
    if status is not None:
        targets.append(Target("status", base / STATUS_NAME, status, private=True))
    new_text = inifile.set_keys(text, "tibber", tibber)
    inifile.check(new_text, str(config))
    targets.append(
        Target("config", config, new_text.encode("utf-8"), private=True, keep_owner=True)
    )
    steps = [_step(t, gid) for t in targets]
    return Plan(config, not base.is_dir(), steps, tibber, gid)


def _beside(base: Path, configured: str, default: str) -> str:
    """The file name to write: the one the config names if it lies in the config's own
    directory, else the default name there (never a file elsewhere, e.g. a system CA)."""
    if configured:
        path = _resolve(base, configured)
        if path.resolve().is_relative_to(base.resolve()):
            return configured
    return default


def _read_config(config: Path) -> str:
    try:
        return config.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        raise ConfigFileError(f"{config} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigFileError(f"cannot read {config}: {e.strerror}") from None


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return -1


def _step(t: Target, gid: int) -> Step:
    try:
        st = t.path.stat()
        old = t.path.read_bytes()
    except FileNotFoundError:
        st, old = None, None
    except OSError as e:
        raise ConfigFileError(f"cannot read {t.path}: {e.strerror}") from None
    if t.keep_owner and st is not None:
        mode, gid, uid = stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid
    elif t.private:
        mode, uid = (PRIVATE_TO_GROUP, -1) if gid >= 0 else (PRIVATE, -1)
    else:
        mode, gid, uid = PUBLIC, -1, -1
    if st is None:
        return Step(t, mode, gid, "new", uid)
    if old != t.content:
        return Step(t, mode, gid, "replaced", uid)
    right = stat.S_IMODE(st.st_mode) == mode and gid in (-1, st.st_gid)
    return Step(t, mode, gid, "unchanged" if right else "mode", uid)


# ---------------------------------------------------------------------------- staged check
def verify(p: Plan) -> None:
    """The planned [tibber] section with the planned files, read back by the agent's own
    loader and TLS check in a private scratch directory. Raises StagedCheckError."""
    # /dev/shm keeps a dry run's copy of the private key off the disk where it exists.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    scratch = Path(tempfile.mkdtemp(prefix="tibber-import-", dir=shm))
    try:
        names: dict[str, str] = {}
        tibber = dict(p.tibber)
        for step in p.steps:
            role = step.target.role
            if role in ("config", "status"):
                continue
            # Each file is named after its key, so that a problem names the key.
            (scratch / role).write_bytes(step.target.content)
            os.chmod(scratch / role, PRIVATE)
            tibber[role] = role
            names[str(scratch / role)] = f"the imported {role}"
        (scratch / "config.ini").write_text(inifile.set_keys("", "tibber", tibber))
        problems: list[str] = []
        try:
            settings = load(scratch / "config.ini")
            assert settings.tibber is not None
            check_files(settings.tibber)
            problems += check_tls(settings.tibber)
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise StagedCheckError(_named(problems[0], names, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _named(problem: str, names: dict[str, str], scratch: Path) -> str:
    for path, label in names.items():
        problem = problem.replace(path, label)
    return problem.replace(str(scratch / "config.ini"), "the imported values")


# ---------------------------------------------------------------------------- writing
def write(p: Plan, report: list[str]) -> None:
    """Carry out the plan: config last, so it never names a file not yet in place. Appends
    one line per change to `report` as it goes (an error leaves the record of what was done).
    Raises OSError."""
    if p.directory_missing:
        p.config.parent.mkdir(parents=True, mode=0o750)
        if p.gid >= 0:  # the service must enter it, as install.sh sets it up
            os.chown(p.config.parent, -1, p.gid)
        report.append(f"created {p.config.parent}/ (0750)" + _group_text(p.gid))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in p.steps:
        try:
            _carry_out(step, stamp, report)
        except OSError as e:  # named by the file it was for, not a scratch name beside it
            raise OSError(e.errno, e.strerror, str(step.target.path)) from None
    _fsync_dir(p.config.parent)


def _carry_out(step: Step, stamp: str, report: list[str]) -> None:
    path = step.target.path
    if step.state == "unchanged":
        return
    if step.state == "mode":
        os.chown(path, step.uid, step.gid)
        os.chmod(path, step.mode)
        report.append(f"{path}: mode {step.mode:04o}" + _group_text(step.gid))
        return
    if step.state == "replaced":
        backup = _backup(path, stamp)
        report.append(f"{path}: old version kept as {backup.name}")
    _replace(path, step.target.content, step)
    report.append(f"{path}: written ({step.mode:04o}{_group_text(step.gid)})")


def _group_text(gid: int) -> str:
    return f", group {_group_name(gid)}" if gid >= 0 else ""


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _backup(path: Path, stamp: str) -> Path:
    """A copy with the original's mode, owner and group; never more readable, not even for
    a moment (created 0600, then given the original's mode)."""
    st = path.stat()
    for n in range(1, 100):
        backup = path.with_name(f"{path.name}.bak-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(path.read_bytes())
            f.flush()
            os.fsync(f.fileno())
            os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
        return backup
    raise FileExistsError(f"{path}.bak-{stamp}: 99 backups in one second")


def _replace(path: Path, content: bytes, step: Step) -> None:
    """Written beside the target, then renamed over it: a reader sees the old file or the
    new one, never a half-written key or config."""
    tmp = path.with_name(f".{path.name}.import-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
            os.fchown(f.fileno(), step.uid, step.gid)
            os.fchmod(f.fileno(), step.mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
