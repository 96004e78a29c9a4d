"""`tibber-agent import-bridge` against a fake bridge web server (tests/harness/fake_bridge.py).

Each test asserts what the user sees: the output and exit status, the files next to the
config with their content, mode and group, and what the bridge was asked. The commands run
in-process through `agent.cli.main` (the fake bridge answers from its own thread); the last
tests run `check` and the agent as processes on the imported files, against the TLS broker.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.conftest import NotProven
from tests.harness import fake_bridge as fb
from tests.harness.agent import BRIDGE_ID, EUI, UID, AgentProcess
from tests.harness.broker import TlsBroker, free_port
from tests.harness.certs import Pki, mismatched_key
from tests.harness.meter import PtyMeter
from tests.harness.observer import Observer
from tests.harness.paths import REPO_ROOT

GROUP = "daemon"  # an existing group standing in for the service's (tibber-agent)
DEFAULT_BASE = f"$aws/rules/ingest_tibber_bridge_data/tibber-bridge/{UID}/publish"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr; put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Setup:
    etc: Path  # the config's directory
    pki: Pki
    creds: fb.Credentials

    @property
    def config(self) -> Path:
        return self.etc / "config.ini"

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> Result:
        capsys.readouterr()
        code = main(["-c", str(self.config), "import-bridge", *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def from_bridge(
        self, capsys: pytest.CaptureFixture[str], bridge: fb.FakeBridge, *args: str
    ) -> Result:
        return self.run(
            capsys, "--host", bridge.host, "--password", fb.PASSWORD, "--group", GROUP, *args
        )


@pytest.fixture
def setup(tmp_path: Path, pki: Pki) -> Setup:
    """The shipped config.ini (comments, every section) as a user's, root:root 0640."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copyfile(REPO_ROOT / "config.ini", etc / "config.ini")
    (etc / "config.ini").chmod(0o640)
    return Setup(etc, pki, fb.Credentials.of(pki))


def tree(directory: Path) -> dict[str, tuple[bytes, int, int, int, int]]:
    """Every file below `directory`: content, mode, owner, group, inode."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(directory))] = (
            content,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_ino,
        )
    return out


def digest(directory: Path) -> str:
    return hashlib.sha256(repr(sorted(tree(directory).items())).encode()).hexdigest()


def key_fragments(pem_text: str) -> list[str]:
    """Every 12-character piece of the key's base64 body: none may appear in any output."""
    body = "".join(
        line.strip() for line in pem_text.splitlines() if line and not line.startswith("-----")
    )
    assert len(body) > 100
    return [body[i : i + 12] for i in range(0, len(body) - 12)]


def assert_no_key(text: str, pem_text: str) -> None:
    leaked = [f for f in key_fragments(pem_text) if f in text]
    assert not leaked, f"a piece of the private key was printed: {leaked[:3]}"


def lf(text: str) -> bytes:
    return text.replace("\r\n", "\n").strip().encode() + b"\n"


def expected_config(original: str, values: dict[str, str]) -> str:
    """The shipped config with `key =` lines of [tibber] set, written out independently of the
    code under test: each key's line replaced where it stands."""
    lines = original.splitlines(keepends=True)
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip()
            continue
        m = re.match(r"(\w+) =", line)
        if section == "[tibber]" and m and m.group(1) in values:
            lines[i] = f"{m.group(1)} = {values[m.group(1)]}".rstrip() + "\n"
    return "".join(lines)


IMPORTED = {
    "mqtt_url": fb.BROKER_HOST,
    "mqtt_port": "8883",
    "uid": UID,
    "bridge_id": BRIDGE_ID,
    "eui": EUI,
    "client_id": "",
    "mqtt_topic": "",
    "node_metrics_template": "node-metrics.json",
}


# ---------------------------------------------------------------------------- dry run
@pytest.mark.parametrize("firmware", ["2023", "2025"])
def test_dry_run_shows_what_it_found_and_changes_nothing(
    setup: Setup, capsys: pytest.CaptureFixture[str], firmware: str
) -> None:
    before = digest(setup.etc)
    with fb.FakeBridge(fb.routes(setup.creds, firmware=firmware)) as bridge:
        r = setup.from_bridge(capsys, bridge)
    assert r.code == 0, r.text
    assert digest(setup.etc) == before
    for value in (fb.BROKER_HOST, UID, BRIDGE_ID, EUI):
        assert value in r.out
    assert "Would write (nothing is changed without --write)" in r.out
    assert "Run again with --write" in r.out
    assert "Unplug the Tibber bridge for good" in r.out
    # The bridge id comes from mqtt_client_id, and the output says that this is an inference.
    assert "bridge_id is taken from mqtt_client_id: the two are equal by inference" in r.out
    # Only reads: nothing on the bridge is changed either.
    assert {q.method for q in bridge.requests} == {"GET"}
    assert all(q.authorized for q in bridge.requests)
    assert fb.WIFI_PSK not in r.text
    assert_no_key(r.text, setup.creds.private_key)


# ---------------------------------------------------------------------------- --write
def test_write_puts_each_file_in_place_with_its_mode_and_keeps_the_config_around_tibber(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    original = setup.config.read_text()
    with fb.FakeBridge(fb.routes(setup.creds, firmware="2025")) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    files = tree(setup.etc)
    backups = [name for name in files if name.startswith("config.ini.bak-")]
    assert len(backups) == 1
    assert set(files) == {
        "ca.pem",
        "certificate.pem",
        "private.key",
        "node-metrics.json",
        "bridge-status.json",
        "config.ini",
        backups[0],
    }
    daemon = 1  # gid of `daemon` on Debian
    assert files["ca.pem"][:4] == (lf(setup.creds.ca), 0o644, 0, 0)
    assert files["certificate.pem"][:4] == (lf(setup.creds.certificate), 0o644, 0, 0)
    assert files["private.key"][:4] == (lf(setup.creds.private_key), 0o640, 0, daemon)
    assert files["bridge-status.json"][1:4] == (0o640, 0, daemon)
    # A metrics document may name the Wi-Fi and the MACs: kept like the key.
    assert files["node-metrics.json"][1:4] == (0o640, 0, daemon)
    # The config keeps its mode, and the old one is kept as it was.
    assert files["config.ini"][1:4] == (0o640, 0, 0)
    assert files[backups[0]][:2] == (original.encode(), 0o640)
    assert setup.config.read_text() == expected_config(original, IMPORTED)
    assert b"\r" not in files["private.key"][0] + files["ca.pem"][0]
    assert fb.WIFI_PSK.encode() not in b"".join(f[0] for f in files.values())
    assert_no_key(r.text, setup.creds.private_key)


def test_a_second_write_changes_nothing(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        first = setup.from_bridge(capsys, bridge, "--write")
        after_first = tree(setup.etc)
        time.sleep(1.1)  # a new backup would get another name
        second = setup.from_bridge(capsys, bridge, "--write")
    assert first.code == second.code == 0, second.text
    assert tree(setup.etc) == after_first
    assert "nothing to change: every file is already as imported" in second.out
    assert second.out.count("unchanged") == 0  # the plan is not shown again with --write


def test_what_it_replaces_is_kept_with_its_owner_and_the_new_files_get_theirs(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files a user (or an older install) left with other content, modes and owners: a
    config.ini owned by `daemon`, 0600; the key 0640 root:daemon; a CA 0600 daemon:daemon.
    Each backup keeps the original's mode, owner and group; the new config keeps them too
    (edited in place); the new key and CA get the documented ones, whatever they had."""
    uid, gid = pwd.getpwnam(GROUP).pw_uid, grp.getgrnam(GROUP).gr_gid
    assert (uid, gid) != (0, 0)
    original = setup.config.read_text()
    held = {  # name: (content, mode, owner, group)
        "config.ini": (original.encode(), 0o600, uid, 0),
        "private.key": (b"an older key\n", 0o640, 0, gid),
        "ca.pem": (b"an older CA\n", 0o600, uid, gid),
    }
    for name, (content, mode, owner, group) in held.items():
        path = setup.etc / name
        path.write_bytes(content)
        os.chown(path, owner, group)
        path.chmod(mode)
    with fb.FakeBridge(fb.routes(setup.creds, firmware="2025")) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    files = tree(setup.etc)
    for name, attributes in held.items():
        backups = [n for n in files if n.startswith(f"{name}.bak-")]
        assert len(backups) == 1, sorted(files)
        assert files[backups[0]][:4] == attributes, name
    assert files["config.ini"][1:4] == (0o600, uid, 0)
    assert setup.config.read_text() == expected_config(original, IMPORTED)
    assert files["private.key"][:4] == (lf(setup.creds.private_key), 0o640, 0, gid)
    assert files["ca.pem"][:4] == (lf(setup.creds.ca), 0o644, 0, 0)
    assert files["certificate.pem"][1:4] == (0o644, 0, 0)
    assert files["node-metrics.json"][1:4] == (0o640, 0, gid)
    assert_no_key(r.text, setup.creds.private_key)


@pytest.mark.parametrize("held", ["other files", "an earlier import"])
def test_a_dry_run_over_files_already_in_place_changes_nothing(
    setup: Setup, capsys: pytest.CaptureFixture[str], held: str
) -> None:
    """The directory already holds PEMs, templates and the status document: from an earlier
    import (the CA's mode changed by hand since), or other ones with other modes and owners.
    Without --write, nothing in it changes (content, mode, owner, group, inode; no backup
    appears)."""
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        if held == "an earlier import":
            assert setup.from_bridge(capsys, bridge, "--write").code == 0
            (setup.etc / "ca.pem").chmod(0o600)
            state = "unchanged"
        else:
            for name in ("ca.pem", "certificate.pem", "private.key", "node-metrics.json"):
                (setup.etc / name).write_text(f"an older {name}\n")
                (setup.etc / name).chmod(0o600)
            os.chown(setup.etc / "private.key", pwd.getpwnam(GROUP).pw_uid, 0)
            (setup.etc / "bridge-status.json").write_text("{}\n")
            state = "replaced"
        before = digest(setup.etc)
        names = sorted(p.name for p in setup.etc.iterdir())
        r = setup.from_bridge(capsys, bridge)
    assert r.code == 0, r.text
    assert digest(setup.etc) == before, sorted(p.name for p in setup.etc.iterdir())
    assert sorted(p.name for p in setup.etc.iterdir()) == names
    assert f"  {state:<10} {setup.etc / 'private.key'}" in r.out, r.out
    ca_state = "mode" if held == "an earlier import" else "replaced"
    assert f"  {ca_state:<10} {setup.etc / 'ca.pem'}  0644" in r.out, r.out
    assert "Would write (nothing is changed without --write)" in r.out


def test_a_new_config_is_made_with_only_tibber_and_a_private_mode(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Setup(tmp_path / "new" / "etc", pki, fb.Credentials.of(pki))
    with fb.FakeBridge(fb.routes(s.creds)) as bridge:
        r = s.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    # The service's group may enter the new directory, as install.sh sets it up.
    assert (stat.S_IMODE(s.etc.stat().st_mode), s.etc.stat().st_gid) == (0o750, 1)
    st = s.config.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 1)
    text = s.config.read_text()
    assert text.startswith("[tibber]\n") and text.count("[") == 1
    assert f"uid = {UID}\n" in text and "private_key = private.key\n" in text


def test_without_the_service_group_the_key_is_0600(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.run(
            capsys, "--host", bridge.host, "--password", fb.PASSWORD,
            "--group", "no-such-group-here", "--write",
        )  # fmt: skip
    assert r.code == 0, r.text
    st = (setup.etc / "private.key").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)


def test_a_path_outside_the_config_directory_is_never_written(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config naming, say, a system CA file for ca_cert: the bridge's CA goes beside the
    config under its default name, and the file elsewhere is left alone."""
    outside = tmp_path / "system-ca.pem"
    outside.write_text("a system CA\n")
    assert "ca_cert = ca.pem\n" in setup.config.read_text()
    text = setup.config.read_text().replace("ca_cert = ca.pem", f"ca_cert = {outside}")
    setup.config.write_text(text)
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    assert outside.read_text() == "a system CA\n"
    assert (setup.etc / "ca.pem").read_bytes() == lf(setup.creds.ca)
    assert "ca_cert = ca.pem\n" in setup.config.read_text()


def test_existing_paths_in_the_config_are_where_the_files_go(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    text = setup.config.read_text().replace("private_key = private.key", "private_key = keys/k.pem")
    setup.config.write_text(text)
    (setup.etc / "keys").mkdir()
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    assert (setup.etc / "keys" / "k.pem").read_bytes() == lf(setup.creds.private_key)
    assert not (setup.etc / "private.key").exists()
    assert "private_key = keys/k.pem\n" in setup.config.read_text()


# ---------------------------------------------------------------------------- failures
def test_a_wrong_password_is_named_and_nothing_is_written(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(setup.etc)
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.run(capsys, "--host", bridge.host, "--password", "ZZ99-ZZ99", "--write")
    assert r.code == 77
    assert r.out == ""
    assert r.err.count("\n") == 1
    assert "refused the password (HTTP 401 for /params.json)" in r.err
    assert "ZZ99-ZZ99" not in r.err
    assert digest(setup.etc) == before
    assert [q.path for q in bridge.requests] == ["/params.json"]  # no retries


def test_an_unreachable_bridge_is_named_with_what_to_check(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(setup.etc)
    r = setup.run(capsys, "--host", f"127.0.0.1:{free_port()}", "--password", "x", "--write")
    assert r.code == 69
    assert r.err.count("\n") == 1
    assert "cannot reach the bridge at 127.0.0.1:" in r.err
    assert "connection was refused" in r.err and "param_set 39 TRUE" in r.err
    assert digest(setup.etc) == before


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".lan", "127.0.0.1:99999", "[::1", "h:0"])
def test_a_host_no_resolver_takes_is_a_usage_error(
    setup: Setup, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    """An empty or over-long label made the resolver raise a ValueError (a traceback, exit
    1); a port beyond 65535 was tried and called refused. Now: one line, exit 64."""
    r = setup.run(capsys, "--host", host, "--password", "x")
    assert r.code == 64, r.err
    assert r.err.count("\n") == 1 and "--host" in r.err, r.err


def test_a_redirect_is_not_followed_with_the_password(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever answers at a wrong address may redirect; urllib would follow it and send
    the Authorization header (the QR code, also the bridge's Wi-Fi key) to the new host."""
    with fb.FakeBridge({}) as elsewhere:
        target = f"http://{elsewhere.host}/params.json"
        with fb.FakeBridge({"/params.json": fb.Redirect(target)}) as bridge:
            r = setup.run(capsys, "--host", bridge.host, "--password", fb.PASSWORD)
        assert elsewhere.requests == []
    assert r.code == 69, r.err
    assert "redirects /params.json elsewhere (HTTP 302)" in r.err


def test_a_trickling_answer_is_given_up_at_the_timeout(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Headers at once, then a byte every 0.25 s: the deadline holds for the whole answer,
    not for each read (one read() took 16 x 0.25 s before)."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:

        def trickle() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n")
                for _ in range(16):
                    if done.wait(0.25):
                        return
                    with contextlib.suppress(OSError):
                        conn.sendall(b"[")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        host = f"127.0.0.1:{server.getsockname()[1]}"
        t0 = time.monotonic()
        r = setup.run(capsys, "--host", host, "--password", "x", "--timeout", "1")
        took = time.monotonic() - t0
        done.set()
        thread.join(5)
    assert r.code == 69, r.err
    assert took < 2.0, took


def test_a_bridge_that_does_not_answer_is_given_up_after_the_timeout(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        r = setup.run(capsys, "--host", host, "--password", "x", "--timeout", "1")
        took = time.monotonic() - t0
    assert r.code == 69
    assert "did not answer /params.json within 1 s" in r.err
    assert took < 5


@pytest.mark.parametrize(
    ("served", "shown"),
    [
        ("********", "is masked (8 times '*', no PEM block)"),
        ("", "is empty (hidden)"),
        (None, "is not in the bridge's list (hidden)"),
    ],
    ids=["masked", "empty", "absent"],
)
def test_a_hidden_key_is_named_with_how_to_get_it_and_nothing_is_written(
    setup: Setup, capsys: pytest.CaptureFixture[str], served: str | None, shown: str
) -> None:
    before = digest(setup.etc)
    with fb.FakeBridge(fb.routes(setup.creds, private_key=served)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 65
    assert f"private_key: /params.json private_key {shown}; by hand: " in r.err
    assert "--private-key FILE" in r.err
    assert r.err.strip().endswith("nothing was written")
    assert digest(setup.etc) == before


def test_a_key_listed_without_a_value_is_named(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = fb.routes(setup.creds)
    next(p for p in routes["/params.json"] if p["name"] == "private_key")["value"] = [None]
    with fb.FakeBridge(routes) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 65
    assert "private_key: /params.json private_key is listed without a usable value" in r.err


def test_a_key_saved_by_hand_completes_the_import(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "key-from-the-params-page.pem"
    saved.write_text(fb.crlf(setup.creds.private_key))
    with fb.FakeBridge(fb.routes(setup.creds, private_key="********")) as bridge:
        r = setup.from_bridge(capsys, bridge, "--private-key", str(saved), "--write")
    assert r.code == 0, r.text
    assert (setup.etc / "private.key").read_bytes() == lf(setup.creds.private_key)
    assert f"--private-key {saved}" in r.out
    assert_no_key(r.text, setup.creds.private_key)


@pytest.mark.parametrize("param", ["ca_cert", "certificate", "private_key"])
def test_a_truncated_pem_is_named_and_nothing_is_written(
    setup: Setup, capsys: pytest.CaptureFixture[str], param: str
) -> None:
    before = digest(setup.etc)
    routes = fb.routes(setup.creds)
    entry = next(p for p in routes["/params.json"] if p["name"] == param)
    entry["value"] = [entry["value"][0][: len(entry["value"][0]) // 2]]
    with fb.FakeBridge(routes) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 65
    assert f"{param}: /params.json {param} is cut short: its BEGIN " in r.err
    assert "block has no END line" in r.err
    assert digest(setup.etc) == before
    assert_no_key(r.text, setup.creds.private_key)


def test_a_key_of_another_certificate_is_named_and_nothing_is_written(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    other = mismatched_key(setup.pki.directory)
    creds = fb.Credentials.of(setup.pki, key=other)
    before = digest(setup.etc)
    with fb.FakeBridge(fb.routes(creds)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 65
    assert r.err == (
        "tibber-agent: import-bridge: [tibber] private_key: the imported private_key does not "
        "belong to the imported certificate; nothing was written\n"
    )
    assert digest(setup.etc) == before
    assert_no_key(r.text, creds.private_key)


def test_values_that_disagree_are_named(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    other = "f" * 32
    routes = fb.routes(setup.creds, topic_sub=f"tibber-bridge/{other}/receive")
    with fb.FakeBridge(routes) as bridge:
        r = setup.from_bridge(capsys, bridge)
    assert r.code == 65
    assert f"mqtt_topic_sub names uid {other}, not {UID}" in r.err


def test_without_a_client_id_the_bridge_id_is_asked_for(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds, client_id=None)) as bridge:
        r = setup.from_bridge(capsys, bridge)
        assert r.code == 65
        assert "bridge_id: /params.json has no mqtt_client_id; by hand: CONSOLE tab" in r.err
        assert "--bridge-id ID" in r.err
        r = setup.from_bridge(capsys, bridge, "--bridge-id", BRIDGE_ID, "--write")
    assert r.code == 0, r.text
    assert f"bridge_id = {BRIDGE_ID}\n" in setup.config.read_text()
    assert "client_id =\n" in setup.config.read_text()


def test_a_client_id_other_than_the_bridge_id_goes_to_client_id(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds, client_id="tibber-client-7")) as bridge:
        r = setup.from_bridge(capsys, bridge, "--bridge-id", BRIDGE_ID, "--write")
    assert r.code == 0, r.text
    text = setup.config.read_text()
    assert f"bridge_id = {BRIDGE_ID}\n" in text
    assert "client_id = tibber-client-7\n" in text


def test_an_unparseable_config_is_named_and_left_alone(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.config.write_text("[tibber]\nuid = 1\n[tibber]\nuid = 2\n")
    before = digest(setup.etc)
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 78
    assert f"{setup.config}: " in r.err and "section 'tibber'" in r.err
    assert digest(setup.etc) == before


def test_a_file_that_cannot_be_written_is_named(
    setup: Setup, capsys: pytest.CaptureFixture[str], not_proven: NotProven
) -> None:
    """An immutable directory (chattr +i) refuses new files even to root."""
    if subprocess.run(["chattr", "+i", str(setup.etc)], check=False).returncode != 0:
        not_proven("chattr +i is not supported here: no way to refuse root a write")
    try:
        with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
            r = setup.from_bridge(capsys, bridge, "--write")
    finally:
        subprocess.run(["chattr", "-i", str(setup.etc)], check=True)
    assert r.code == 73
    assert r.err == (
        f"tibber-agent: import-bridge: cannot write {setup.etc / 'ca.pem'}: "
        "Operation not permitted\n"
    )
    assert sorted(p.name for p in setup.etc.iterdir()) == ["config.ini"]


# ---------------------------------------------------------------------------- firmware variants
@pytest.mark.parametrize(
    ("topic", "written"),
    [
        (f"tibber-bridge/{UID}/publish", ""),
        (DEFAULT_BASE, ""),
        (DEFAULT_BASE + "/", ""),
        (f"tibber-bridge/{UID}", f"tibber-bridge/{UID}"),
    ],
    ids=["without-prefix", "with-prefix", "trailing-slash", "other-base"],
)
def test_mqtt_topic_with_and_without_the_rule_prefix(
    setup: Setup, capsys: pytest.CaptureFixture[str], topic: str, written: str
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds, topic=topic)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    text = setup.config.read_text()
    assert f"uid = {UID}\n" in text
    assert f"mqtt_topic = {written}".rstrip() + "\n" in text
    if written:
        assert "not the " + DEFAULT_BASE + " every capture shows" in r.out


@pytest.mark.parametrize(
    ("firmware", "broker_param", "template"),
    [("2023", "mqtt_host", True), ("2025", "mqtt_url", True), ("modern", "mqtt_url", False)],
)
def test_old_and_new_firmware(
    setup: Setup,
    capsys: pytest.CaptureFixture[str],
    firmware: str,
    broker_param: str,
    template: bool,
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds, firmware=firmware)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    assert f"({'/params.json'} {broker_param})" in r.out
    text = setup.config.read_text()
    assert f"mqtt_url = {fb.BROKER_HOST}\n" in text
    saved = setup.etc / "node-metrics.json"
    if template:
        assert "node_metrics_template = node-metrics.json\n" in text
        assert saved.read_bytes() == bridge.body("/metrics.json?node_id=1")
    else:
        assert "node_metrics_template =\n" in text
        assert not saved.exists()
        assert "/metrics.json?node_id=1 (HTTP 404); not used" in r.out
        assert "node_metrics_template: not set: /node_metrics.json?node_id=1 has none" in r.out
    if firmware != "2023":
        assert "webserver_force_enable (param 39) is not listed" in r.out


def test_a_node_template_the_agent_would_refuse_is_skipped_with_the_field_named(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    bad: dict[str, Any] = {**fb.LEGACY_NODE_METRICS}
    bad["node_status"] = {**bad["node_status"], "meter_mode": "4"}
    with fb.FakeBridge(fb.routes(setup.creds, metrics=bad)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    assert (
        "node_metrics_template: not set: /metrics.json?node_id=1 "
        'field "node_status.meter_mode" must be a whole number, got "4"'
    ) in r.out
    assert not (setup.etc / "node-metrics.json").exists()
    assert "node_metrics_template =\n" in setup.config.read_text()


def test_the_bridge_status_is_not_taken_as_the_bridge_template_and_says_why(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text
    assert "bridge_metrics_template: not set: no local endpoint is known" in r.out
    assert "bridge_metrics_template =\n" in setup.config.read_text()
    assert (setup.etc / "bridge-status.json").read_bytes() == bridge.body("/status.json?timeout=0")


# ---------------------------------------------------------------------------- --from-file
def test_from_saved_files_without_a_bridge(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    saved = tmp_path / "saved"
    saved.mkdir()
    routes = fb.routes(setup.creds, firmware="2025")
    for name, path in [
        ("params.json", "/params.json"),
        ("nodes.json", "/nodes.json"),
        ("metrics.json", "/metrics.json?node_id=1"),
    ]:
        (saved / name).write_text(json.dumps(routes[path]))
    (saved / "tjh01.json").write_text(json.dumps(fb.TJH01_METRIC))
    params = fb.params(setup.creds, client_id=None)  # the bridge id from the TJH01 capture
    (saved / "params.json").write_text(json.dumps(params))
    r = setup.run(
        capsys,
        "--from-file", str(saved / "params.json"),
        "--nodes-file", str(saved / "nodes.json"),
        "--metrics-file", str(saved / "metrics.json"),
        "--bridge-metrics-file", str(saved / "tjh01.json"),
        "--group", GROUP, "--write",
    )  # fmt: skip
    assert r.code == 0, r.text
    assert r.out.startswith("Read from saved files: ")
    assert f"{saved / 'tjh01.json'} device_id" in r.out
    text = setup.config.read_text()
    assert f"bridge_id = {BRIDGE_ID}\n" in text
    assert f"eui = {EUI}\n" in text
    assert "bridge_metrics_template = bridge-metrics.json\n" in text
    assert (setup.etc / "bridge-metrics.json").read_bytes() == (saved / "tjh01.json").read_bytes()


def test_from_a_file_that_is_not_there(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    r = setup.run(capsys, "--from-file", "/nonexistent/params.json")
    assert r.code == 66
    assert r.err == (
        "tibber-agent: import-bridge: cannot read /nonexistent/params.json: "
        "No such file or directory\n"
    )


def test_from_a_file_that_is_not_the_params_list(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "params.html"
    page.write_text("<html>PARAMS</html>")
    r = setup.run(capsys, "--from-file", str(page), "--eui", EUI)
    assert r.code == 65
    assert f"{page} is not JSON" in r.err


# ---------------------------------------------------------------------------- the result works
def test_the_imported_files_pass_check_and_the_agent_connects_with_them(
    setup: Setup,
    capsys: pytest.CaptureFixture[str],
    tls_broker: TlsBroker,
    pty_meter: PtyMeter,
    observer: Observer,
) -> None:
    """The bridge hands out the test broker's CA and a client certificate of its CA: the
    written config passes `check` (which connects once) and the agent's hello arrives."""
    text = setup.config.read_text()
    text = text.replace("port = /dev/ttyUSB0", f"port = {pty_meter.link}")
    text = text.replace("enabled = true\ngpio = 17", "enabled = false\ngpio = 17")
    setup.config.write_text(text)
    routes = fb.routes(setup.creds, host="localhost", port=tls_broker.port)
    with fb.FakeBridge(routes) as bridge:
        r = setup.from_bridge(capsys, bridge, "--write")
    assert r.code == 0, r.text

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("JOURNAL_STREAM", None)
    check = subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(setup.config), "check"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    with AgentProcess(setup.config, "run") as agent:
        hello = observer.wait_for(f"{DEFAULT_BASE}/TJH01/{BRIDGE_ID}/event", timeout=15)
        assert b'"HUB_EVENT_MQTT_SUBSCRIBE_EVENT"' in hello.payload, agent.log_text()
    assert f"as {BRIDGE_ID} " in tls_broker.log_text()


def test_as_a_process_a_refused_password_is_one_line_and_exit_77(setup: Setup) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("JOURNAL_STREAM", None)
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        p = subprocess.run(
            [sys.executable, "-m", "agent", "-c", str(setup.config), "import-bridge",
             "--host", bridge.host, "--password", "WRONG-PASS", "--write"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
    assert (p.returncode, p.stdout) == (77, "")
    assert p.stderr.startswith("tibber-agent: import-bridge: the bridge at 127.0.0.1:")
    assert p.stderr.count("\n") == 1


def test_the_password_can_stay_out_of_the_process_list(setup: Setup) -> None:
    """Left out, --password is taken from $TIBBER_BRIDGE_PASSWORD (a prompt on a terminal);
    with neither, one line names all three ways (exit 64). The process list never shows it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("JOURNAL_STREAM", None)
    argv = [sys.executable, "-m", "agent", "-c", str(setup.config), "import-bridge", "--host"]
    with fb.FakeBridge(fb.routes(setup.creds)) as bridge:
        given = subprocess.run(
            [*argv, bridge.host],
            capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
            env={**env, "TIBBER_BRIDGE_PASSWORD": fb.PASSWORD},
        )  # fmt: skip
        missing = subprocess.run(
            [*argv, bridge.host],
            capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
            env={k: v for k, v in env.items() if k != "TIBBER_BRIDGE_PASSWORD"},
        )  # fmt: skip
    assert given.returncode == 0, given.stdout + given.stderr
    assert fb.PASSWORD not in given.stdout + given.stderr
    assert missing.returncode == 64, missing.stdout + missing.stderr
    assert missing.stderr.count("\n") == 1
    for way in ("--password", "$TIBBER_BRIDGE_PASSWORD", "asked"):
        assert way in missing.stderr, missing.stderr
