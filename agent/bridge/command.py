"""`tibber-agent import-bridge`: read the bridge, show what was found, write only with --write.

Exit status (sysexits.h):
  0   read (and, with --write, written)
  64  EX_USAGE        --host is not a host name or address, or --password is missing
  65  EX_DATAERR      the bridge's values cannot be used as they are (hidden, cut short, a key
                      that does not belong to the certificate, values that disagree); nothing
                      is written, each problem is named with how to get the value by hand
  66  EX_NOINPUT      a file given on the command line cannot be read
  69  EX_UNAVAILABLE  the bridge cannot be reached, or does not answer like one
  73  EX_CANTCREAT    a file next to the config cannot be written
  77  EX_NOPERM       the bridge refused the password (HTTP 401/403)
  78  EX_CONFIG       the existing config file cannot be read or edited
The private key is never printed: not its text, not a part of it, not in an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import extract, files
from .client import BridgeClient, BridgeError, NotFound, Refused, parse_host

EX_DATAERR = os.EX_DATAERR
EX_NOINPUT = os.EX_NOINPUT
EX_CANTCREAT = os.EX_CANTCREAT
EX_CONFIG = 78
SERVICE_GROUP = "tibber-agent"
PREFIX = "tibber-agent: import-bridge: "


@dataclass(frozen=True)
class Options:
    host: str = ""
    password: str = ""
    from_file: Path | None = None
    nodes_file: Path | None = None
    metrics_file: Path | None = None
    status_file: Path | None = None
    bridge_metrics_file: Path | None = None
    bridge_id: str = ""
    eui: str = ""
    private_key: Path | None = None
    group: str = SERVICE_GROUP
    timeout: float = 10.0
    write: bool = False

    @classmethod
    def of(cls, args: argparse.Namespace) -> Options:
        return cls(**{k: v for k, v in vars(args).items() if k in cls.__dataclass_fields__})


class _Failed(Exception):
    def __init__(self, code: int, lines: list[str]) -> None:
        super().__init__(lines[0])
        self.code, self.lines = code, lines


def run(
    options: Options, config: Path, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    try:
        return _run(options, config, out or sys.stdout)
    except _Failed as e:
        for line in e.lines:
            print(PREFIX + line, file=err or sys.stderr)
        return e.code


def _run(o: Options, config: Path, out: TextIO) -> int:
    docs, where, notes = _documents(o)
    overrides = extract.Overrides(
        bridge_id=o.bridge_id.strip(),
        eui=o.eui.strip(),
        private_key=_key_file(o.private_key) if o.private_key else None,
    )
    try:
        harvest = extract.harvest(docs, overrides)
    except extract.DocumentError as e:
        raise _Failed(EX_DATAERR, [str(e)]) from None
    harvest.notes[:0] = notes

    print(f"Read from {where}: {extract.describe(docs)}", file=out)
    _show_findings(harvest, out)
    if harvest.problems:
        raise _Failed(
            EX_DATAERR,
            [p.message for p in harvest.problems] + ["nothing was written"],
        )

    status = docs.status.body if docs.status is not None else None
    try:
        plan = files.plan(config, harvest, status, o.group)
    except (files.ConfigFileError, files.inifile.IniError) as e:
        raise _Failed(EX_CONFIG, [f"{config}: {e}; nothing was written"]) from None
    try:
        files.verify(plan)
    except files.StagedCheckError as e:
        raise _Failed(EX_DATAERR, [f"{e}; nothing was written"]) from None

    print(
        "\nThe agent's own check passes on these values (config, PEMs, key and certificate).",
        file=out,
    )
    if not o.write:
        print("\nWould write (nothing is changed without --write):", file=out)
        _show_plan(plan, out)
        print("\nRun again with --write to write them.", file=out)
        _next_steps(config, out, written=False)
        return 0

    print("\nWritten:", file=out)
    report: list[str] = []
    try:
        files.write(plan, report)
    except OSError as e:
        for line in report:
            print(f"  {line}", file=out)
        what = e.filename or config.parent
        done = "; backups of replaced files are kept" if report else ""
        raise _Failed(EX_CANTCREAT, [f"cannot write {what}: {e.strerror}{done}"]) from None
    for line in report or ["nothing to change: every file is already as imported"]:
        print(f"  {line}", file=out)
    _next_steps(config, out, written=True)
    return 0


# ---------------------------------------------------------------------------- reading
def _documents(o: Options) -> tuple[extract.Documents, str, list[str]]:
    """The documents, from files or from the bridge; where they came from; notes."""
    given = {
        "nodes": _file(o.nodes_file),
        "node_metrics": _file(o.metrics_file),
        "status": _file(o.status_file),
        "bridge_metrics": _file(o.bridge_metrics_file),
    }
    if o.from_file is not None:
        params = _file(o.from_file)
        assert params is not None
        return extract.Documents(params=params, **given), "saved files", []
    try:
        host = parse_host(o.host)
    except ValueError as e:
        raise _Failed(os.EX_USAGE, [f"--host {e}"]) from None
    password = o.password or _password_elsewhere()
    if not password:
        need = (
            "the bridge's password (the QR code on it) is needed with --host: "
            f"--password, ${PASSWORD_ENV}, or run it in a terminal to be asked"
        )
        raise _Failed(os.EX_USAGE, [need])
    client = BridgeClient(host, password, o.timeout)
    notes: list[str] = []

    def fetch(path: str, required: bool = False) -> extract.Document | None:
        try:
            return client.get(path)
        except Refused as e:
            raise _Failed(e.exit_code, [str(e)]) from None
        except NotFound as e:
            if required:
                raise _Failed(e.exit_code, [f"{e}: is this a Tibber Pulse bridge?"]) from None
            notes.append(f"{e}; not used")
        except BridgeError as e:
            if required:
                raise _Failed(e.exit_code, [str(e)]) from None
            notes.append(f"{path} could not be read ({str(e).split('; ')[0]}); not used")
        return None

    params = fetch("/params.json", required=True)
    assert params is not None
    nodes = given["nodes"] or fetch("/nodes.json")
    node_id = 1
    if nodes is not None:
        with contextlib.suppress(extract.DocumentError):  # named by the harvest
            node_id = extract.pulse_node(nodes).node_id
    metrics = given["node_metrics"]
    if metrics is None:
        # The legacy document the cloud metric is made of (§5.3); the modern one otherwise.
        metrics = fetch(f"/metrics.json?node_id={node_id}") or fetch(
            f"/node_metrics.json?node_id={node_id}"
        )
    status = given["status"] or fetch("/status.json?timeout=0")
    docs = extract.Documents(params, nodes, metrics, status, given["bridge_metrics"])
    return docs, f"the bridge at {host}", notes


# A password on the command line shows in the process list while the command runs; the
# environment and a prompt keep it out.
PASSWORD_ENV = "TIBBER_BRIDGE_PASSWORD"


def _password_elsewhere() -> str:
    """The password from $TIBBER_BRIDGE_PASSWORD, else asked for on a terminal, else ""."""
    given = os.environ.get(PASSWORD_ENV, "")
    if given or not sys.stdin.isatty():
        return given
    import getpass

    try:
        return getpass.getpass("the bridge's password (the QR code on it): ")
    except EOFError:
        return ""


def _file(path: Path | None) -> extract.Document | None:
    if path is None:
        return None
    try:
        return extract.Document(str(path), path.read_bytes())
    except OSError as e:
        raise _Failed(EX_NOINPUT, [f"cannot read {path}: {e.strerror}"]) from None


def _key_file(path: Path) -> tuple[str, str]:
    doc = _file(path)
    assert doc is not None
    try:
        return f"--private-key {path}", doc.body.decode("ascii")
    except UnicodeDecodeError:
        raise _Failed(EX_DATAERR, [f"--private-key {path} is not PEM text"]) from None


# ---------------------------------------------------------------------------- showing
def _show_findings(h: extract.Harvest, out: TextIO) -> None:
    if h.findings:
        width = max(len(f.name) for f in h.findings)
        print("\nFound:", file=out)
        for f in h.findings:
            print(f"  {f.name:<{width}}  {f.value}  ({f.source})", file=out)
    if h.notes:
        print("\nNotes:", file=out)
        for note in h.notes:
            print(f"  - {note}", file=out)


def _show_plan(plan: files.Plan, out: TextIO) -> None:
    if plan.directory_missing:
        print(f"  new        {plan.config.parent}/  0750", file=out)
    for step in plan.steps:
        print(f"  {step.state:<10} {step.describe()}", file=out)


def _next_steps(config: Path, out: TextIO, *, written: bool) -> None:
    c = "" if config == Path("/etc/tibber-agent/config.ini") else f" -c {shlex.quote(str(config))}"
    first = "Then" if not written else "Next"
    print(
        f"\n{first}:\n"
        "  1. Unplug the Tibber bridge for good, and take the batteries out of the Pulse IR.\n"
        "     The bridge and the agent log in with the same client id; the broker drops the\n"
        "     older connection whenever the other connects, and both keep reconnecting\n"
        "     (AWS IoT: confirmed; the loop: reported by peers; firmware-notes/harvesting.md §6).\n"
        f"  2. sudo -u {SERVICE_GROUP} /opt/tibber-agent/bin/tibber-agent{c} check\n"
        "  3. sudo systemctl enable --now tibber-agent",
        file=out,
    )
