"""GETs against the bridge's local web interface: HTTP Basic `admin:<QR>`, every one bounded.

Facts (tibber-bridge.md §8): plain HTTP on port 80; Basic auth on every endpoint (confirmed,
MARQ-R, LP-I1); in station mode the web server runs only with `webserver_force_enable`
(param 39), always in access-point mode at 10.133.70.1 (confirmed, BOT, MARQ-R). Only GET is
ever sent: reading the parameters changes nothing on the bridge.

Proxies from the environment are ignored on purpose: the bridge is on the LAN (or its own
access point), and an HTTP proxy would be handed the password.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request

from ..config import host_name
from .extract import Document

MAX_BODY = 1 << 20  # params.json is a few KB; anything near this is not the bridge
USER = "admin"
AP_ADDRESS = "10.133.70.1"
_HOST_PORT = re.compile(r"(?P<host>[^:\[\]]+|\[[^\]]*\])(?::(?P<port>\d{1,5}))?")

# sysexits.h, as the errors below map to them
EX_UNAVAILABLE = os.EX_UNAVAILABLE  # 69
EX_NOPERM = os.EX_NOPERM  # 77

REACH_HINT = (
    "is the bridge on and is this its address? In normal mode its web server runs only with "
    "webserver_force_enable (param 39) set: on the console `param_set 39 TRUE` and "
    f"`param_store`; or join its access point and use --host {AP_ADDRESS} "
    "(firmware-notes/harvesting.md §2)"
)


class BridgeError(Exception):
    """One line for the user, and the exit status it ends the command with."""

    exit_code = EX_UNAVAILABLE


class Unreachable(BridgeError):
    pass


class Refused(BridgeError):
    exit_code = EX_NOPERM


class NotFound(BridgeError):
    pass


def parse_host(text: str) -> str:
    """`host`, `host:port`, `http://host[:port][/]` -> `host[:port]` for a URL (an IPv6
    address in brackets). The host held to the same rule as the config's host names (a
    label of 1-63 characters: the resolver raises a ValueError on any other). Raises
    ValueError."""
    value = text.strip()
    if value.lower().startswith("https://"):
        raise ValueError(f"the bridge serves plain http, not https: {text!r}")
    value = re.sub(r"^http://", "", value, flags=re.IGNORECASE).rstrip("/")
    found = _HOST_PORT.fullmatch(value)
    if not found:
        raise ValueError(f"must be a host name or address, optionally with :port, got {text!r}")
    host, port = found["host"], found["port"]
    try:
        address = host_name(host)
    except ValueError as e:
        raise ValueError(f"{e} (in {text!r})") from None
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be between 1 and 65535, got {port} in {text!r}")
    shown = f"[{address}]" if ":" in address else address
    return shown if port is None else f"{shown}:{port}"


class BridgeClient:
    def __init__(self, host: str, password: str, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        token = base64.b64encode(f"{USER}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def get(self, path: str) -> Document:
        """The document at `path`. Raises Refused (401/403), NotFound (404), Unreachable."""
        url = f"http://{self.host}{path}"
        request = urllib.request.Request(
            url,
            headers={"Authorization": self._auth, "User-Agent": "tibber-agent import-bridge"},
        )
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = _read_bounded(response, deadline)
            if body is None:
                raise Unreachable(
                    f"{self.host} answered {path} with more than {MAX_BODY} bytes: not the bridge?"
                )
        except urllib.error.HTTPError as e:
            e.close()
            raise self._status_error(path, e.code) from None
        except urllib.error.URLError as e:
            why = _why(e.reason)
            raise Unreachable(
                f"cannot reach the bridge at {self.host}: {why}; {REACH_HINT}"
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"the bridge at {self.host} did not answer {path} within {self.timeout:g} s; "
                + REACH_HINT
            ) from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise Unreachable(
                f"{self.host} does not answer {path} like the bridge's web server "
                f"({type(e).__name__}); {REACH_HINT}"
            ) from None
        except OSError as e:
            raise Unreachable(f"cannot reach the bridge at {self.host}: {_why(e)}") from None
        return Document(path, body)

    def _status_error(self, path: str, code: int) -> BridgeError:
        if code in (401, 403):
            return Refused(
                f"the bridge at {self.host} refused the password (HTTP {code} for {path}): "
                f"user {USER}, password = the QR code on the bridge's sticker, with its dash"
            )
        if code == 404:
            return NotFound(f"the bridge at {self.host} has no {path} (HTTP 404)")
        if 300 <= code < 400:
            return Unreachable(
                f"{self.host} redirects {path} elsewhere (HTTP {code}), which the bridge never "
                f"does, so the password was not sent on; {REACH_HINT}"
            )
        return Unreachable(f"the bridge at {self.host} answered {path} with HTTP {code}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The bridge never redirects; urllib would follow a redirect with the Authorization
    header, handing the QR password (also the bridge's Wi-Fi key) to whatever host a wrong
    address or a captive portal names. A redirect is an HTTP error instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def _read_bounded(response: http.client.HTTPResponse, deadline: float) -> bytes | None:
    """The body, or None past MAX_BODY. Raises TimeoutError past the deadline (a server that
    trickles bytes would otherwise reset the per-read timeout forever). read1 returns what
    one read of the socket brings, so the deadline is looked at between any two of them."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)


def _why(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return "the name does not resolve"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (no web server on that port)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
