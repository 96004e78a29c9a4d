"""scripts/reliability.py and scripts/provenance.py: every figure in docs/reliability.md
comes from the run that wrote it.

The report is rendered from a Report that holds the run's data; the renderer adds no
number of its own, and each sentence that states a fact changes with the data behind it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.provenance import Activity, CodeState, Neighbour, ProcessWatch
from scripts.reliability import (
    Outcome,
    Report,
    Setting,
    outcomes,
    render,
    settings,
    written_by_soak,
)
from scripts.soak import Sample, readings_flowing
from scripts.soak import checks as soak_checks
from tests.harness.agent import TOPIC_OBIS
from tests.harness.paths import REPO_ROOT

NUMBER = re.compile(r"\d+(?:\.\d+)?")
# The kernel's load-average windows name the values, they are not measured.
LABELS = {1.0, 5.0, 15.0}


def numbers(text: str, precisions: tuple[int, ...] = ()) -> set[float]:
    """The numbers in a text, and each rounded to these decimal places (as displayed)."""
    found = {float(n) for n in NUMBER.findall(text)}
    return found | {round(x, p) for x in found for p in precisions}


def activity(**changes: object) -> Activity:
    base = Activity(
        started=datetime.datetime(2031, 7, 9, 8, 41, 3, tzinfo=datetime.UTC),
        seconds=437.0,
        cores=2,
        load_before=(0.37, 0.29, 0.23),
        load_after=(1.93, 1.47, 0.83),
        busy=1.39,
        steal=0.02,
        own=0.61,
        neighbours=(Neighbour("pytest", 3, 0.74),),
        unlisted=0.04,
        runs=(("pytest", (4411, 4417, 4423)),),
        threshold=0.01,
        samples=219,
        period=2.0,
    )
    return dataclasses.replace(base, **changes)


def row(test: str, ok: bool = True, **extra: object) -> dict:
    return {
        "test": test,
        "fault": "3 half-open connection",
        "injected": "mosquitto SIGSTOPped (keepalive 2 s)",
        "measured": "detected after 2.84 s",
        "bound": "detected <= 3.0 s",
        "ok": ok,
        "scale": 1.0,
        **extra,
    }


def report(**changes: object) -> Report:
    clean = CodeState("b4e7d91", "Fix a thing", ())
    base = Report(
        command="python3 scripts/reliability.py --window 120",
        pytest_args=["-q", "tests/faults", "tests/perf"],
        ci_command="exec bash tests/run.sh -q",
        finished=datetime.datetime(2031, 7, 9, 8, 48, 21, tzinfo=datetime.UTC),
        code_before=clean,
        code_after=clean,
        machine="box: Some CPU, 2 cores, 8 GiB; Linux 6.1.0 aarch64; Python 3.11.2",
        activity=activity(),
        settings=[
            Setting(
                "PERF_WINDOW", (), "unset (default 0)", "120", "WINDOW = 105.0", "WINDOW = 120.0"
            )
        ],
        selection=[],
        summary="2 passed in 431.17s",
        exit_code=0,
        rows=[row("tests/faults/t.py::test_a")],
        tests={"tests/faults/t.py::test_a": Outcome("passed", "", 1.0, 2.0)},
        others={"tests/faults/t.py::test_a": 0.67},
    )
    return dataclasses.replace(base, **changes)


def serialized(r: Report) -> str:
    """The report's data, with what the data computes of itself (Activity.rest)."""
    return json.dumps([dataclasses.asdict(r), r.activity.rest], default=str)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"exit_code": 1, "rows": [row("tests/faults/t.py::test_a", ok=False)]},
        {
            "code_before": CodeState("b4e7d91", "Fix", (" M agent/mqtt.py", "?? new.py")),
            "activity": activity(runs=(("scripts/soak.py", (3391,)),), neighbours=()),
            "tests": {"tests/faults/t.py::test_a": Outcome("skipped", "no faketime", None, None)},
            "soak_follows": True,
        },
    ],
)
def test_every_number_in_the_report_comes_from_the_run(variant: dict) -> None:
    r = report(**variant)
    text = render(r)
    invented = numbers(text) - numbers(serialized(r), (0, 1, 2)) - LABELS
    assert not invented, f"numbers the run did not produce: {sorted(invented)}\n{text}"


def test_the_sentences_follow_the_data() -> None:
    quiet = render(report())
    assert "clean" in quiet and "**dirty**" not in quiet
    assert "scripts/soak.py was not running" in quiet
    assert "**Not met**" not in quiet and "**Skipped**" not in quiet
    assert "before 0.37 / 0.29 / 0.23; after 1.93 / 1.47 / 0.83" in quiet
    assert "1.39 of 2: this run 0.61, other work 0.78" in quiet
    assert "pytest: 0.74 (3 processes)" in quiet
    assert "This run differs from CI's in `PERF_WINDOW` and the tests it runs." in quiet

    busy = render(
        report(
            code_before=CodeState("b4e7d91", "Fix", (" M agent/mqtt.py",)),
            code_after=CodeState("c0ffee1", "Other", ()),
            activity=activity(runs=(("scripts/soak.py", (3391,)), ("pytest", (4411, 4417)))),
            rows=[row("t::a", ok=False), row("t::b", note="why it is so")],
            tests={
                "t::a": Outcome("passed", "", None, None),
                "t::b": Outcome("failed", "assert 3 <= 2", None, None),
                "t::c": Outcome("skipped", "faketime missing", None, None),
                "t::d": Outcome("passed", "", None, None),
            },
            others={},
            settings=[Setting("FAULT_SCALE", (), "unset (default 1)", "unset (default 1)", "", "")],
        )
    )
    assert "**dirty**: 1 paths changed or untracked: `M agent/mqtt.py`" in busy
    assert "**at the end**: commit c0ffee1" in busy
    assert "scripts/soak.py x1, pytest x2; scripts/soak.py was running" in busy
    assert "- **Not met**: 3 half-open connection: measured detected after 2.84 s" in busy
    assert "| ok, but the test failed | ? |" in busy
    assert "- **Failed**: `t::b`: assert 3 <= 2" in busy
    assert "- **Skipped**: `t::c`: faketime missing" in busy
    assert "Passed without recording a figure: `t::d`." in busy
    assert "- 3 half-open connection: why it is so" in busy
    assert "This run differs from CI's in the tests it runs." in busy


def test_tests_without_a_figure_are_named_by_file_with_their_cases_folded() -> None:
    """A parametrized suite (the corruption test: 160-odd cases) stays one readable line:
    each test's cases are counted, not listed; a lone test keeps its full id."""
    passed = Outcome("passed", "", None, None)
    cases = [f"tests/meter/c.py::test_x[{k}]" for k in ("BZ", "2R", "DTA")]
    text = render(
        report(
            tests={
                "tests/faults/t.py::test_a": passed,
                **dict.fromkeys(cases, passed),
                "tests/meter/c.py::test_y": passed,
                "tests/perf/p.py::test_z[1]": passed,
            }
        )
    )
    assert (
        "- Passed without recording a figure: `tests/meter/c.py`: `test_x` (3 cases), "
        "`test_y`, `tests/perf/p.py::test_z[1]`.\n"
    ) in text, text


def test_a_soak_section_is_kept_only_with_its_circumstances() -> None:
    typed = "\n## Soak\n\nThe agent ran at commit 1c07c2e; the later changes touch ...\n"
    written = "\n## Soak\n\n| | |\n|---|---|\n| command | `python scripts/soak.py` |\n"
    assert not written_by_soak(typed)
    assert written_by_soak(written)


def test_outcomes_name_failures_and_skips() -> None:
    events = [
        {"test": "a", "event": "start", "t": 10.0},
        {"test": "a", "event": "setup", "outcome": "failed", "seconds": 0.1, "reason": "boom"},
        {"test": "a", "event": "finish", "t": 11.0},
        {"test": "b", "event": "start", "t": 12.0},
        {"test": "b", "event": "setup", "outcome": "skipped", "seconds": 0, "reason": "why"},
        {"test": "c", "event": "call", "outcome": "passed", "seconds": 1, "reason": ""},
        {"test": "c", "event": "teardown", "outcome": "failed", "seconds": 0, "reason": "leak"},
    ]
    got = outcomes(json.dumps(e) for e in events)
    assert got["a"] == Outcome("error in setup", "boom", 10.0, 11.0)
    assert got["b"] == Outcome("skipped", "why", 12.0, None)
    assert got["c"].outcome == "error in teardown"


def test_settings_are_read_from_the_code(tmp_path: Path) -> None:
    """CI's value is the code's default unless a CI file sets it; what the code makes of a
    value comes from importing the module, not from the generator."""
    (tmp_path / "tests" / "perf").mkdir(parents=True)
    (tmp_path / "tests" / "faults").mkdir()
    (tmp_path / ".ci").mkdir()
    for init in ("tests", "tests/perf", "tests/faults"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "tests" / "perf" / "test_x.py").write_text(
        "import os\n"
        "# Seconds measured (never below 105).\n"
        'WINDOW = max(float(os.environ.get("PERF_WINDOW", "0")), 105.0)\n'
    )
    (tmp_path / "tests" / "faults" / "conftest.py").write_text(
        'import os\nSCALE = float(os.environ.get("FAULT_SCALE", "1"))  # counts x this\n'
    )
    (tmp_path / ".ci" / "run").write_text("FAULT_SCALE=2 exec bash tests/run.sh -q\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PERF_WINDOW", "FAULT_SCALE")}

    found = {s.name: s for s in settings(tmp_path, {"PERF_WINDOW": "120"}, env)}
    window, scale = found["PERF_WINDOW"], found["FAULT_SCALE"]
    assert window.reads[0].comment == "Seconds measured (never below 105)."
    assert (window.ci, window.ci_effect) == ("unset (default 0)", "WINDOW = 105.0")
    assert (window.this_run, window.this_effect) == ("120", "WINDOW = 120.0")
    assert window.differs
    assert scale.reads[0].comment == "counts x this"
    assert scale.ci == "set in .ci/run" and scale.ci_effect == ""

    same = {s.name: s for s in settings(tmp_path, {"PERF_WINDOW": "50"}, env)}
    assert not same["PERF_WINDOW"].differs  # 50 and the default both make WINDOW 105.0


def test_the_real_settings_can_be_evaluated() -> None:
    """Each setting the suites read at module level imports and evaluates under CI's
    environment, so the report can say what CI runs."""
    found = settings(REPO_ROOT, {}, dict(os.environ))
    assert found, "the suites read no settings: the report's CI comparison is empty"
    for s in found:
        if any(r.target for r in s.reads):
            assert s.ci_effect and "?" not in s.ci_effect, s


def test_process_watch_sees_other_processes(tmp_path: Path) -> None:
    """A busy process that is not this run's (orphaned, so not a descendant) is listed
    under its command name with its CPU; this run's own busy child counts as the run's."""
    python = Path(sys.executable).resolve()  # the binary: not a venv's, not a shim
    theirs, ours = tmp_path / "otherloop", tmp_path / "ownloop"
    theirs.symlink_to(python)
    ours.symlink_to(python)
    loop = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass\n"
    watch = ProcessWatch(period=0.5).start()
    # sh starts the loop in the background and exits: the loop is reparented, not ours.
    subprocess.run(["sh", "-c", f'"{theirs}" -c "$0" &', loop], check=True, timeout=10)
    subprocess.run([str(ours), "-c", loop], check=True, timeout=20)
    time.sleep(0.5)
    seen = watch.stop()
    other = {n.label: n for n in seen.neighbours}
    assert "otherloop" in other, seen
    assert other["otherloop"].cores >= 0.2, seen
    assert "ownloop" not in other, seen
    # this run (and its own children) is never another run
    assert not any(os.getpid() in pids for _, pids in seen.runs), seen.runs
    assert seen.own >= 0.2, seen
    assert seen.busy >= other["otherloop"].cores, seen


# ---------------------------------------------------------------- scripts/soak.py's checks
def _samples(threads: list[int], fds: list[int], rss_kb: list[int]) -> list[Sample]:
    return [
        Sample(t=600.0 + 30 * i, rss_kb=r, threads=t, fds=f, write_bytes=0, settled=True)
        for i, (t, f, r) in enumerate(zip(threads, fds, rss_kb, strict=True))
    ]


def _verdicts(samples: list[Sample], log_times=(), quiet=((600.0, 700.0),)) -> dict[str, bool]:
    found = soak_checks(samples, 300.0, list(log_times), list(quiet), True, 0)
    return {c.name.split()[0]: c.ok for c in found}


def test_soak_checks_what_it_prints() -> None:
    steady = _samples([3, 3, 3], [11, 11, 11], [28000, 28100, 28200])
    assert all(_verdicts(steady).values()), _verdicts(steady)
    # "constant" means one value: 3 then 4 threads is a change (once allowed: <= 2 values)
    assert _verdicts(_samples([3, 4, 4], [11] * 3, [28000] * 3))["threads"] is False
    # "no growth" of fds: one more is growth (once allowed: within 2)
    assert _verdicts(_samples([3] * 3, [11, 12, 13], [28000] * 3))["file"] is False
    assert _verdicts(_samples([3] * 3, [11] * 3, [28000, 28500, 29100]))["RSS"] is False
    # a log line in a quiet period fails (once always true)
    assert _verdicts(steady, log_times=[650.0])["log"] is False
    assert _verdicts(steady, log_times=[590.0, 700.0])["log"] is True


def test_soak_without_settled_samples_is_not_a_pass() -> None:
    unsettled = [dataclasses.replace(s, settled=False) for s in _samples([3], [11], [28000])]
    found = soak_checks(unsettled, 300.0, [], [], True, 0)
    assert [c.name for c in found if c.ok is None] == [
        "RSS growth",
        "threads",
        "file descriptors",
        "bytes written",
        "log lines in the quiet periods",
    ]
    assert not all(c.ok for c in found)


def test_soak_says_no_when_readings_stop(plain_broker, observer_factory) -> None:
    """At the end the soak waits for a reading: none within the wait is its check's "no"
    (the run goes on to print and write its report), never an exception out of the run.
    A real broker and subscriber, as the soak has."""
    observer = observer_factory(plain_broker, ("$aws/rules/#",))
    sender = observer_factory(plain_broker, ("unused/#",))
    assert readings_flowing(observer, timeout=0.5) is False
    later = threading.Timer(0.3, lambda: sender._client.publish(TOPIC_OBIS, b"/EBZ5DD3", qos=1))
    later.start()
    try:
        assert readings_flowing(observer, timeout=5.0) is True
    finally:
        later.join(5)
