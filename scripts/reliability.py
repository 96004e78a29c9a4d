#!/usr/bin/env python3
"""Run the fault-injection suite, the budget tests and the corruption test; write
docs/reliability.md from the run.

    .venv-test/bin/python scripts/reliability.py [--scale 10] [--window 60] [--set NAME=VALUE]
                                                 [--out docs/reliability.md] [-- pytest args]

(.venv-test is the venv `sudo bash tests/run.sh` builds; any Python with the test extras works.)

Each test of tests/faults and tests/perf, and the per-line test of
tests/meter/test_corruption.py, records rows with `figure(...)` (tests/conftest.py):
the fault, how it was injected, what was measured, the bound and whether it was met, and
optionally a `note=` that explains a figure (worded as an explanation: any number in it
must come from the run). Every sentence of the report that states a measured fact is
made here from this run's data: the rows, each test's outcome and times (scripts/testlog.py),
and the circumstances (scripts/provenance.py: commit and changes, machine, load average,
the other processes that used the CPU meanwhile). How the run differs from CI's is read
from the tests' code: the environment variables they read, with their defaults.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.provenance import (  # noqa: E402
    Activity,
    CodeState,
    ProcessWatch,
    cell,
    code_state,
    cores,
    machine,
    render_circumstances,
)

TEST_PATHS = ("tests/faults", "tests/perf", "tests/meter/test_corruption.py")
# The generator's own plumbing, left out of the command shown in the report.
PLUGINS = ("-p", "no:cacheprovider", "-p", "scripts.testlog")
# Where the run's settings are read: the suites' code and the conftest above them.
SETTINGS_SOURCES = (*TEST_PATHS, "tests/conftest.py")
# What CI runs: the README command, through these two files.
CI_FILES = (".ci/run", "tests/run.sh")
SOAK_HEADING = "\n## Soak\n"


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Read:
    """One place where the tests read an environment variable with a default."""

    file: str
    default: str
    target: str | None  # the module-level name assigned from it, if any
    comment: str  # the comment on or just above that line: what it means


@dataclass(frozen=True)
class Setting:
    """An environment variable the tests read, with CI's value and this run's."""

    name: str
    reads: tuple[Read, ...]
    ci: str  # CI's raw value: the code's default, or how a CI file sets it
    this_run: str
    ci_effect: str  # what the code makes of it, e.g. "WINDOW = 105.0"; "" if not known
    this_effect: str

    @property
    def differs(self) -> bool:
        if self.ci_effect and self.this_effect:
            return self.ci_effect != self.this_effect
        return self.this_run != self.ci


def read_defaults(root: Path, sources: Iterable[str]) -> dict[str, list[Read]]:
    """NAME -> every `os.environ.get("NAME", "default")` or `os.getenv(...)` with literal
    arguments in the given files and folders."""
    found: dict[str, list[Read]] = {}
    files: list[Path] = []
    for source in sources:
        path = root / source
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
    for path in files:
        text = path.read_text()
        try:
            tree = ast.parse(text, str(path))
        except SyntaxError:
            continue
        targets = {}  # call node -> (module-level name, line)
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                for node in ast.walk(stmt.value):
                    targets[node] = (stmt.targets[0].id, stmt.lineno)
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and len(node.args) == 2):
                continue
            if ast.unparse(node.func) not in ("os.environ.get", "os.getenv"):
                continue
            name, default = node.args
            if not (isinstance(name, ast.Constant) and isinstance(default, ast.Constant)):
                continue
            target, lineno = targets.get(node, (None, node.lineno))
            read = Read(
                str(path.relative_to(root)),
                str(default.value),
                target,
                _comment(lines, lineno),
            )
            found.setdefault(str(name.value), []).append(read)
    return found


def _comment(lines: list[str], lineno: int) -> str:
    """The comment at the end of line `lineno` (1-based), else the comment lines above it."""
    line = lines[lineno - 1]
    if "  # " in line:
        return line.split("  # ", 1)[1].strip()
    above = []
    for prev in reversed(lines[: lineno - 1]):
        if not prev.lstrip().startswith("#"):
            break
        above.insert(0, prev.strip().lstrip("#").strip())
    return " ".join(above)


def effects(root: Path, reads: Iterable[Read], env: dict[str, str]) -> dict[str, str]:
    """ "file:NAME" -> the value the module computes under `env`, by importing it."""
    wanted = sorted({(r.file, r.target) for r in reads if r.target})
    if not wanted:
        return {}
    probe = (
        "import importlib, json, sys\n"
        "out = {}\n"
        "for file, name in json.loads(sys.argv[1]):\n"
        "    module = importlib.import_module(file.removesuffix('.py').replace('/', '.'))\n"
        "    out[file + ':' + name] = f'{name} = {getattr(module, name)!r}'\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(wanted)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode:
        return {f"{f}:{n}": f"? ({run.stderr.strip().splitlines()[-1]})" for f, n in wanted}
    return json.loads(run.stdout)


def settings(
    root: Path,
    given: dict[str, str],
    env: dict[str, str],
    internal: Sequence[str] = ("FAULT_RESULTS", "TEST_LOG"),
) -> list[Setting]:
    """The tests' settings: what CI runs (the code's defaults, unless a CI file names the
    variable) against this run's values, each with what the code makes of it."""
    ci_text = {f: (root / f).read_text() if (root / f).exists() else "" for f in CI_FILES}
    found = {k: v for k, v in read_defaults(root, SETTINGS_SOURCES).items() if k not in internal}
    base = {k: v for k, v in env.items() if k not in found}
    ci_effects = effects(root, (r for rs in found.values() for r in rs), base)
    run_effects = effects(root, (r for rs in found.values() for r in rs), {**base, **given})
    out = []
    for name, reads in sorted(found.items()):
        values = sorted({r.default for r in reads})
        code = values[0] if len(values) == 1 else " or ".join(values)
        setters = [f for f, text in ci_text.items() if name in text]
        ci = f"set in {', '.join(setters)}" if setters else f"unset (default {code})"
        keys = [f"{r.file}:{r.target}" for r in reads if r.target]
        out.append(
            Setting(
                name,
                tuple(reads),
                ci,
                given.get(name, f"unset (default {code})"),
                "" if setters else "; ".join(ci_effects.get(k, "") for k in keys),
                "; ".join(run_effects.get(k, "") for k in keys),
            )
        )
    return out


def written_by_soak(section: str) -> bool:
    """Whether a soak section has the circumstances table soak.py writes."""
    return any(
        line.startswith("| command | ") and "scripts/soak.py" in line
        for line in section.splitlines()
    )


def ci_command(root: Path) -> str:
    """The line of .ci/run that starts tests/run.sh."""
    path = root / CI_FILES[0]
    lines = path.read_text().splitlines() if path.exists() else []
    found = [x.strip() for x in lines if "tests/run.sh" in x and not x.lstrip().startswith("#")]
    return found[-1] if found else f"nothing: {CI_FILES[0]} does not start tests/run.sh"


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class Outcome:
    outcome: str  # passed, failed, skipped
    reason: str
    start: float | None
    finish: float | None


def outcomes(lines: Iterable[str]) -> dict[str, Outcome]:
    """Fold scripts/testlog.py's events into one result per test: failed if any phase
    failed, skipped if one was skipped, else passed."""
    events: dict[str, list[dict]] = {}
    for line in lines:
        event = json.loads(line)
        events.setdefault(event["test"], []).append(event)
    out = {}
    for test, evs in events.items():
        phases = [e for e in evs if "outcome" in e]
        failed = [e for e in phases if e["outcome"] == "failed"]
        skipped = [e for e in phases if e["outcome"] == "skipped"]
        picked = (failed or skipped or [{"outcome": "passed", "reason": ""}])[0]
        outcome = "failed" if failed else picked["outcome"]
        if failed and picked["event"] != "call":
            outcome = f"error in {picked['event']}"
        start = next((e["t"] for e in evs if e["event"] == "start"), None)
        finish = next((e["t"] for e in evs if e["event"] == "finish"), None)
        out[test] = Outcome(outcome, picked.get("reason", ""), start, finish)
    return out


@dataclass
class Report:
    """Everything the text is made of; render() adds no figure of its own."""

    command: str
    pytest_args: list[str]
    ci_command: str  # how .ci/run starts the tests
    finished: datetime.datetime
    code_before: CodeState
    code_after: CodeState
    machine: str
    activity: Activity
    settings: list[Setting]
    selection: list[str]  # pytest arguments beyond the suites (CI runs everything)
    summary: str  # pytest's last line
    exit_code: int
    rows: list[dict]
    tests: dict[str, Outcome]
    others: dict[str, float | None] = field(default_factory=dict)  # test -> cores
    soak_follows: bool = False


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def render(r: Report) -> str:
    out = [
        "# Reliability: faults injected, figures measured",
        "",
        "Generated by `scripts/reliability.py` from the run below; every figure, and every",
        "sentence that states one, comes from that run. The faults hit real parts only:",
        "mosquitto with a client-certificate TLS listener (like AWS IoT), ptys behind a symlink",
        "as the IR head, the agent as a subprocess. The damaged telegrams of",
        "tests/meter/test_corruption.py go through the agent's own pipeline in-process.",
        "",
        *render_circumstances(
            r.command, r.code_before, r.code_after, r.machine, r.activity, r.finished
        ),
        f"| test run | `pytest {shlex.join(r.pytest_args)}`: {r.summary} (exit {r.exit_code}) |",
        "",
        "## This run and CI's",
        "",
        f"CI runs `{r.ci_command}` (`.ci/run`, the README's command), with the bounds the tests",
        "assert, which do not change with the settings. The tests read these settings; CI's",
        "values are the code's defaults unless a CI file sets them:",
        "",
        "| setting | what the code says it is | read in | CI | this run |",
        "|---|---|---|---|---|",
    ]
    for s in r.settings:
        where = ", ".join(sorted({x.file for x in s.reads}))
        meaning = " / ".join(sorted({x.comment for x in s.reads if x.comment}))
        ci = s.ci + (f": `{s.ci_effect}`" if s.ci_effect else "")
        this = s.this_run + (f": `{s.this_effect}`" if s.this_effect else "")
        mark = " (differs)" if s.differs else ""
        cells = [f"`{s.name}`", meaning, where, ci, this + mark]
        out.append("| " + " | ".join(cell(c) for c in cells) + " |")
    selection = " ".join(TEST_PATHS) + (f" {shlex.join(r.selection)}" if r.selection else "")
    out.append(f"| tests | | | `{r.ci_command}` | {cell(selection)} |")
    differs = [f"`{s.name}`" for s in r.settings if s.differs] + ["the tests it runs"]
    out += [
        "",
        f"This run differs from CI's in {_and(differs)}.",
        "",
        "## Figures",
        "",
        f"`others`: the CPU that other processes seen in /proc used while the test ran, in "
        f"cores on average ({r.activity.cores} on this machine).",
        "",
        "| fault | how it was injected | measured | bound | | others |",
        "|---|---|---|---|---|---|",
    ]
    for row in r.rows:
        result = r.tests.get(row["test"])
        status = "ok" if row["ok"] else "**not met**"
        if row["ok"] and result is not None and result.outcome != "passed":
            status = f"ok, but the test {result.outcome}"
        others = r.others.get(row["test"])
        cells = [
            row["fault"],
            row["injected"],
            row["measured"],
            row["bound"],
            status,
            "?" if others is None else cores(others),
        ]
        out.append("| " + " | ".join(cell(c) for c in cells) + " |")
    out += ["", "## Notes", "", *(f"- {n}" for n in notes(r))]
    return "\n".join(out) + "\n"


def notes(r: Report) -> list[str]:
    """What the table alone does not say, derived from the rows and the test results."""
    out = []
    for row in r.rows:
        if not row["ok"]:
            out.append(
                f"**Not met**: {row['fault']}: measured {row['measured']}; bound {row['bound']}."
            )
    with_rows = {row["test"] for row in r.rows}
    for test, res in r.tests.items():
        if res.outcome == "skipped":
            out.append(f"**Skipped**: `{test}`: {res.reason}")
        elif res.outcome != "passed":
            out.append(f"**{res.outcome.capitalize()}**: `{test}`: {res.reason}")
    no_figure = [t for t, res in r.tests.items() if res.outcome == "passed" and t not in with_rows]
    if no_figure:
        out.append("Passed without recording a figure: " + ", ".join(_folded(no_figure)) + ".")
    for row in r.rows:
        if row.get("note"):
            out.append(f"{row['fault']}: {row['note']}")
    out.append(
        "The soak (`scripts/soak.py --report`, not in CI) writes the section below from its own "
        "run, with its own circumstances."
        if r.soak_follows
        else "No soak section yet: `scripts/soak.py --report` adds one (see the README)."
    )
    return out


def _folded(tests: list[str]) -> list[str]:
    """Test ids by file, the cases of a parametrized test as one name with their count:
    `f.py::test_x`, or `f.py`: `test_a` (3 cases), `test_b`."""
    by_file: dict[str, list[str]] = {}
    for test in tests:
        file, _, name = test.partition("::")
        by_file.setdefault(file, []).append(name)
    out = []
    for file, names in by_file.items():
        if len(names) == 1:
            out.append(f"`{file}::{names[0]}`")
            continue
        cases = Counter(name.split("[", 1)[0] for name in names)
        shown = (f"`{n}`" + (f" ({k} cases)" if k > 1 else "") for n, k in cases.items())
        out.append(f"`{file}`: " + ", ".join(shown))
    return out


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", help="FAULT_SCALE: counts x this (default: the code's, as CI)")
    ap.add_argument("--window", help="PERF_WINDOW: budget seconds (default: the code's, as CI)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="any other setting"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    given = dict(item.split("=", 1) for item in args.set)
    if args.scale is not None:
        given["FAULT_SCALE"] = args.scale
    if args.window is not None:
        given["PERF_WINDOW"] = args.window
    known = settings(ROOT, given, dict(os.environ))
    unknown = set(given) - {s.name for s in known}
    if unknown:
        ap.error(f"no test reads {', '.join(sorted(unknown))}")

    # As typed, with the interpreter (sys.orig_argv); main(argv) from Python shows argv.
    command = shlex.join(sys.orig_argv if argv is None else ["scripts/reliability.py", *argv])
    pytest_args = ["-q", *PLUGINS, *TEST_PATHS]
    pytest_args += args.pytest_args
    with tempfile.TemporaryDirectory() as tmp:
        figures, log = Path(tmp) / "figures.jsonl", Path(tmp) / "tests.jsonl"
        # Only this run's settings: a variable left in the caller's environment would
        # change the run without showing in the report.
        env = {k: v for k, v in os.environ.items() if k not in {s.name for s in known}}
        env.update(given, FAULT_RESULTS=str(figures), TEST_LOG=str(log))
        code_before = code_state(ROOT)
        watch = ProcessWatch().start()
        run = subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        activity = watch.stop()
        code_after = code_state(ROOT)
        rows = [json.loads(x) for x in figures.read_text().splitlines()] if figures.exists() else []
        tests = outcomes(log.read_text().splitlines()) if log.exists() else {}

    old = args.out.read_text() if args.out.exists() else ""
    soak = old[old.index(SOAK_HEADING) :] if SOAK_HEADING in old else ""
    if not written_by_soak(soak):
        soak = ""  # written by hand or by an older soak.py, without its circumstances: dropped
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    report = Report(
        command=command,
        pytest_args=["-q", *TEST_PATHS, *args.pytest_args],
        ci_command=ci_command(ROOT),
        finished=datetime.datetime.now(datetime.UTC),
        code_before=code_before,
        code_after=code_after,
        machine=machine(sys.executable),
        activity=activity,
        settings=known,
        selection=list(args.pytest_args),
        summary=lines[-1].strip("= ") if lines else "no summary",
        exit_code=run.returncode,
        rows=rows,
        tests=tests,
        others={
            t: watch.others_during(res.start, res.finish)
            for t, res in tests.items()
            if res.start is not None and res.finish is not None
        },
        soak_follows=bool(soak),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report) + soak)
    print(f"wrote {args.out} ({len(rows)} figures); {report.summary}")
    if run.returncode:
        print(run.stdout[-4000:], run.stderr[-2000:], file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
