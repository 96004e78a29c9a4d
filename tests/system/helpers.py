"""Shared code for the system tests: a throwaway copy-on-write root and a systemd boot in it.

`Sandbox` is overlayfs over the host's `/` inside a private mount and PID namespace
(`unshare`), as in ../shared/notes/test-harness.md §7. Everything written to the sandbox
lands in a tmpfs upper layer that vanishes with the namespace, so the host stays untouched
and the upper layer lists exactly what a command changed. `Sandbox.boot()` then boots the
root under a real systemd with `systemd-nspawn` (§6, §7 "Install + boot").

The host side reaches the sandbox through `/proc/<namespace init>/root/...`, which resolves
paths in the namespace's private mounts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The checkout under test. TIBBER_AGENT_CHECKOUT tests another tree (e.g. a release copy).
CHECKOUT = Path(os.environ.get("TIBBER_AGENT_CHECKOUT") or Path(__file__).resolve().parents[2])
INSTALL_SH = CHECKOUT / "install.sh"
UNIT_FILE = CHECKOUT / "tibber-agent.service"
UDEV_RULES = CHECKOUT / "udev" / "99-tibber-agent.rules"
UNIT = "tibber-agent.service"
VENV = "/opt/tibber-agent"
ETC = "/etc/tibber-agent"
# The venv must be built with Debian's Python: a pyenv one is invisible in the container.
SYSTEM_PYTHON = "/usr/bin/python3"
# Where the checkout and the wheelhouse appear inside a sandbox (read-only binds). Not under
# /tmp: a booted container mounts a fresh tmpfs there.
SANDBOX_CHECKOUT = "/srv/tibber-agent"
SANDBOX_WHEELHOUSE = "/srv/tibber-agent-wheels"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------------------
# What this machine can do
# ---------------------------------------------------------------------------------------
def _missing_tools(tools: Iterable[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def missing_tool(tool: str, package: str) -> str | None:
    """Why a test needing `tool` cannot run here, or None."""
    return None if shutil.which(tool) else f"{tool} missing (apt-get install {package})"


def copy_checkout(dest: Path, *also_ignore: str, source: Path = CHECKOUT) -> Path:
    """The checkout (or another copy of it) without VCS data, build leftovers and caches."""
    shutil.copytree(
        source,
        dest,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".venv-test",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "wheelhouse",
            ".pytest_cache",
            ".ruff_cache",
            *also_ignore,
        ),
    )
    return dest


@functools.cache
def overlay_skip_reason() -> str | None:
    """Why install.sh cannot run in a throwaway root here, or None."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (mount namespaces, overlayfs, chroot)"
    missing = _missing_tools(["unshare", "nsenter", "chroot", "mount", "umount"])
    if missing:
        return f"missing tools: {', '.join(missing)} (util-linux, coreutils)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems and not Path("/sys/module/overlay").exists():
        return "the kernel has no overlayfs (modprobe overlay)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} missing (Debian's python3)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} cannot create venvs (apt-get install python3-venv)"
    return None


@functools.cache
def nspawn_skip_reason() -> str | None:
    """Why the installed service cannot be booted under systemd-nspawn here, or None."""
    reason = overlay_skip_reason()
    if reason:
        return reason
    missing = _missing_tools(["systemd-nspawn"])
    if missing:
        return "systemd-nspawn missing (apt-get install systemd-container)"
    if not Path("/lib/systemd/systemd").exists():
        return "no systemd to boot (/lib/systemd/systemd missing)"
    if not (Path("/usr/sbin/mosquitto").exists() or Path("/usr/bin/mosquitto").exists()):
        return "mosquitto missing (apt-get install mosquitto mosquitto-clients)"
    if shutil.which("mosquitto_sub") is None:
        return "mosquitto_sub missing (apt-get install mosquitto-clients)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system"
    return None


# ---------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------
@dataclass
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"{shlex.join(self.args)} exited {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
            )
        return self


def run(args: Sequence[str], *, timeout: float = 120, env=None, input=None) -> Result:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
        check=False,
    )
    return Result(list(args), proc.returncode, proc.stdout, proc.stderr)


def sandbox_env(**extra: str) -> dict[str, str]:
    """A clean environment for commands in the sandbox (host pip settings kept)."""
    env = {"PATH": SANDBOX_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key in ("http_proxy", "https_proxy", "no_proxy"):
            env[key] = value
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# The wheelhouse
# ---------------------------------------------------------------------------------------
def build_wheelhouse(dest: Path) -> Path:
    """Wheels of the agent's dependencies (and the build backend) for an offline install.

    Built with Debian's pip from a copy of the checkout, so no build/ or *.egg-info lands in
    the checkout. install.sh finds them through TIBBER_AGENT_WHEELHOUSE.
    """
    src = dest.parent / "wheelhouse-src"
    copy_checkout(src, "tests")
    dest.mkdir(parents=True, exist_ok=True)
    pip = [SYSTEM_PYTHON, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--quiet", "-w", str(dest), str(src)], timeout=600).check()
    # The build backend for `pip install <checkout>` with build isolation and --no-index.
    run([*pip, "download", "--quiet", "-d", str(dest), "setuptools>=61"], timeout=600).check()
    shutil.rmtree(src)
    # Only the dependencies: install.sh must build the agent itself from the checkout.
    for wheel in dest.glob("tibber_agent-*.whl"):
        wheel.unlink()
    return dest


_snapshot_cache: dict[str, Path] = {}


def checkout_snapshot(tmp_path_factory) -> Path:
    """The checkout as it was when the session's first system test needed it; the system
    tests install from this copy. The checkout itself may change during a run (work going
    on in the tree), and install.sh reinstalls when its sources change; from one snapshot,
    a reinstall that should change nothing must change nothing, or it is a real failure."""
    if "path" not in _snapshot_cache:
        _snapshot_cache["path"] = copy_checkout(
            tmp_path_factory.mktemp("checkout") / "tibber-agent"
        )
    return _snapshot_cache["path"]


_wheelhouse_cache: dict[str, Path] = {}


def wheelhouse(tmp_path_factory) -> Path:
    """The session's wheelhouse (built once), or a prebuilt one from TIBBER_AGENT_WHEELHOUSE."""
    prebuilt = os.environ.get("TIBBER_AGENT_WHEELHOUSE")
    if prebuilt:
        return Path(prebuilt)
    if "path" not in _wheelhouse_cache:
        _wheelhouse_cache["path"] = build_wheelhouse(
            tmp_path_factory.mktemp("wheels") / "wheelhouse"
        )
    return _wheelhouse_cache["path"]


# ---------------------------------------------------------------------------------------
# A complete configuration
# ---------------------------------------------------------------------------------------
TEST_IDS = {
    "uid": "0123456789abcdef0123456789abcdef",
    "bridge_id": "0a1b2c3d4e5f6",
    "eui": "0a1b2c3d4e5f6071",
}


def set_ini(text: str, section: str, key: str, value: str | None) -> str:
    """Set (or with None delete) one key of one section, keeping comments and layout."""
    out, current, done = [], None, False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section and not done and value is not None:
                out.append(f"{key} = {value}\n")
                done = True
            current = stripped[1:-1]
        elif (
            current == section
            and "=" in stripped
            and not stripped.startswith(("#", ";"))
            and stripped.split("=", 1)[0].strip() == key
        ):
            done = True
            if value is not None:
                out.append(f"{key} = {value}\n")
            continue
        out.append(line)
    if not done and value is not None:
        if current != section:
            out.append(f"\n[{section}]\n")
        out.append(f"{key} = {value}\n")
    return "".join(out)


def complete_config(text: str, mqtt_url: str = "localhost", **overrides: str) -> str:
    values = {"mqtt_url": mqtt_url, **TEST_IDS}
    for key, value in values.items():
        text = set_ini(text, "tibber", key, value)
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1)
        text = set_ini(text, section, key, value)
    return text


def issue_credentials(directory: Path, cn: str = TEST_IDS["bridge_id"]):
    """ca.pem, certificate.pem and private.key as the bridge's PARAMS page has them; returns
    the trustme CA so a broker certificate can come from it too."""
    import trustme  # a test dependency; only the tests that need it import it

    ca = trustme.CA()
    leaf = ca.issue_cert(cn, common_name=cn)
    (directory / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (directory / "certificate.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    (directory / "private.key").write_bytes(leaf.private_key_pem.bytes())
    return ca


# ---------------------------------------------------------------------------------------
# Snapshots of the upper layer
# ---------------------------------------------------------------------------------------
# Paths (relative to /) that change on any run and say nothing about the installer.
IGNORED_PREFIXES = (
    "tmp/",
    "var/tmp/",
    "var/cache/",
    "var/log/",
    "var/lib/apt/",
    "var/lib/dpkg/lock",
    "root/.cache/",
    "run/",
    "dev/",
    "proc/",
    "sys/",
)


def ignored(rel: str) -> bool:
    return (
        "__pycache__" in rel.split("/")
        or rel.endswith(".pyc")
        or any(rel == p.rstrip("/") or rel.startswith(p) for p in IGNORED_PREFIXES)
    )


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "link", "whiteout", "other"
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str | None


def snapshot(upper: Path) -> dict[str, Entry]:
    """Every path in an overlay upper layer (relative, without a leading /)."""
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, upper)
            st = os.lstat(full)
            target = None
            if stat.S_ISLNK(st.st_mode):
                kind, target = "link", os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISREG(st.st_mode):
                kind = "file"
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                kind = "whiteout"  # overlayfs marks a deleted lower file like this
            else:
                kind = "other"
            entries[rel] = Entry(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                target,
            )
    return entries


def diff_snapshots(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """Human-readable differences, ignoring caches, logs and temporary files."""
    out = []
    for rel in sorted(set(before) | set(after)):
        if ignored(rel):
            continue
        a, b = before.get(rel), after.get(rel)
        if a == b:
            continue
        if (
            a
            and b
            and a.kind == b.kind == "dir"
            and (a.mode, a.uid, a.gid) == (b.mode, b.uid, b.gid)
        ):
            continue  # a directory's mtime moves when a temporary entry comes and goes
        out.append(f"{rel}: {a} -> {b}")
    return out


# ---------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------
class Sandbox:
    """overlayfs over `/` in a private mount + PID namespace, with a chroot to run commands.

    binds: (host path, path in the sandbox, read_only) mounted over the overlay, e.g. the
    checkout (read-only, which also proves install.sh writes nothing into it).
    """

    def __init__(self, workdir: Path, binds: Sequence[tuple[str, str, bool]] = ()):
        self.workdir = Path(workdir)
        self.binds = list(binds)
        self.proc: subprocess.Popen | None = None
        self.init_pid = 0
        self.boot_proc: subprocess.Popen | None = None
        self.container_pid = 0
        self.cgroups: list[Path] = []
        self.console_log = self.workdir.parent / f"{self.workdir.name}-console.log"

    # -- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        w = shlex.quote(str(self.workdir))
        lines = [
            "set -eu",
            f"W={w}",
            'mount -t tmpfs -o mode=0755 tmpfs "$W"',
            'mkdir "$W/upper" "$W/work" "$W/root"',
            'mount -t overlay -o lowerdir=/,upperdir="$W/upper",workdir="$W/work"'
            ' overlay "$W/root"',
            'mount --rbind /dev "$W/root/dev"',
            'mount -t proc proc "$W/root/proc"',
            'mount --rbind /sys "$W/root/sys"',
            'mount -t tmpfs -o mode=0755 tmpfs "$W/root/run"',
        ]
        for host, inside, read_only in self.binds:
            dst = f'"$W/root"{shlex.quote(inside)}'
            lines.append(f"mkdir -p {dst}")
            lines.append(f"mount --bind {shlex.quote(host)} {dst}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {dst}")
        lines += ["echo ready", "exec sleep infinity"]
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                "-c",
                "\n".join(lines),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.wait(timeout=10)
            raise RuntimeError(f"sandbox setup failed: {line}{self.proc.stderr.read()}")
        self.init_pid = _children(self.proc.pid)[0]

    def close(self) -> None:
        if self.boot_proc is not None:
            self.poweroff()
        if self.proc is not None:
            if self.init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.init_pid, signal.SIGKILL)  # takes the whole namespace along
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                stream.close()
            self.proc = None
        self._remove_cgroups()

    # -- paths --------------------------------------------------------------------------
    @property
    def ns_root(self) -> Path:
        """The namespace's view of the host's / (as seen from the host)."""
        return Path(f"/proc/{self.init_pid}/root")

    @property
    def upper(self) -> Path:
        return self.ns_root / str(self.workdir).lstrip("/") / "upper"

    @property
    def root(self) -> Path:
        """The sandbox's / as a host path (writes land in the upper layer)."""
        return self.ns_root / str(self.workdir).lstrip("/") / "root"

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def snapshot(self) -> dict[str, Entry]:
        return snapshot(self.upper)

    # -- commands -----------------------------------------------------------------------
    def ns(self, args: Sequence[str], **kw) -> Result:
        """Run a command in the namespace (host file system view, private mounts)."""
        return run(["nsenter", "-t", str(self.init_pid), "-m", "-p", "--", *args], **kw)

    def chroot(self, args: Sequence[str], *, env=None, **kw) -> Result:
        """Run a command chrooted into the sandbox root."""
        root = str(self.workdir / "root")
        return self.ns(["chroot", root, *args], env=env or sandbox_env(), **kw)

    # -- boot ---------------------------------------------------------------------------
    def mask_host_units(self, keep: Iterable[str] = ()) -> list[str]:
        """Mask every unit the host enables (mosquitto, postgresql, getty …) plus firstboot
        and wait-online, so the container boots in about a second."""
        keep = set(keep)
        etc = self.path("/etc/systemd/system")
        names = {"systemd-firstboot.service", "systemd-networkd-wait-online.service"}
        for wants in etc.glob("*.wants"):
            names.update(p.name for p in wants.iterdir())
        for wants in etc.glob("*.requires"):
            names.update(p.name for p in wants.iterdir())
        masked = []
        for name in sorted(names - keep):
            link = etc / name
            if link.is_symlink() and os.readlink(link) == "/dev/null":
                continue
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to("/dev/null")
            masked.append(name)
        return masked

    def boot(self, extra_args: Sequence[str] = (), timeout: float = 60, env=None) -> None:
        """Boot the sandbox root with systemd-nspawn (private network) and wait until the
        system is up (running or degraded)."""
        w = shlex.quote(str(self.workdir))
        umount = [
            f"umount -R {w}/root/proc",
            f"umount -R {w}/root/sys",
            f"umount -R {w}/root/dev",
            f"umount -R {w}/root/run",
            # nspawn fills an empty /dev itself; the host's static nodes would break it
            f"mount -t tmpfs -o mode=0755 tmpfs {w}/root/dev",
        ]
        self.ns(["sh", "-c", " && ".join(umount)]).check()
        # nspawn --keep-unit puts payload/ and supervisor/ cgroups under its own cgroup: give
        # it one of ours to remove afterwards (PID 1 here is not systemd, nobody else will).
        name = f"tibber-agent-test-{os.getpid()}-{self.init_pid}"
        moves = []
        for hierarchy in ("systemd", "unified"):
            base = Path("/sys/fs/cgroup") / hierarchy
            if not base.is_dir():
                continue
            cg = base / name
            cg.mkdir(exist_ok=True)
            self.cgroups.append(cg)
            moves.append(f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}")
        nspawn = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "-D",
            str(self.workdir / "root"),
            "--private-network",
            "-q",
            *extra_args,
            "-b",
            "systemd.firstboot=off",
        ]
        script = "; ".join([*moves, "exec " + shlex.join(nspawn)])
        log = open(self.console_log, "w")  # noqa: SIM115 - closed in poweroff()
        self.boot_proc = subprocess.Popen(
            ["nsenter", "-t", str(self.init_pid), "-m", "-p", "--", "sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._boot_log = log
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.boot_proc.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited {self.boot_proc.returncode}:\n{self.console()}"
                )
            pid = self._find_container_systemd()
            if pid:
                self.container_pid = pid
                state = self.ctl(["systemctl", "is-system-running"]).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"container did not boot in {timeout} s:\n{self.console()}")

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def ctl(self, args: Sequence[str], **kw) -> Result:
        """Run a command inside the booted container (all its namespaces)."""
        return run(["nsenter", "-t", str(self.container_pid), "-a", "--", *args], **kw)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.ctl(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).check()
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.ctl(["journalctl", "--no-pager", "-o", "short-monotonic", "-u", unit]).output

    def poweroff(self) -> None:
        proc, self.boot_proc = self.boot_proc, None
        if proc is None:
            return
        if proc.poll() is None and self.container_pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ctl(["systemctl", "poweroff"], timeout=10)
                proc.wait(timeout=15)
        if proc.poll() is None:
            for pid in reversed(_descendants(proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self._boot_log.close()
        self.container_pid = 0

    def _find_container_systemd(self) -> int:
        for pid in _descendants(self.boot_proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            except OSError:
                continue
        return 0

    def _remove_cgroups(self) -> None:
        for cg in self.cgroups:
            if not cg.exists():
                continue
            # depth first; a cgroup directory goes with rmdir once it has no processes
            for dirpath, _dirs, _files in sorted(os.walk(cg), key=lambda t: -len(t[0])):
                deadline = time.monotonic() + 5
                while True:
                    try:
                        os.rmdir(dirpath)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
        self.cgroups = []


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return [int(k) for k in kids]
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} has no children")


def _descendants(pid: int) -> list[int]:
    """pid's descendants, parents before children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


@contextlib.contextmanager
def sandbox(workdir: Path, binds: Sequence[tuple[str, str, bool]] = ()) -> Iterator[Sandbox]:
    sb = Sandbox(workdir, binds)
    sb.start()
    try:
        yield sb
    finally:
        sb.close()
