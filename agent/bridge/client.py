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

from .extract import Document

MAX_BODY = 1 << 20  # params.json is a few KB; anything near this is not the bridge
USER = "admin"
AP_ADDRESS = "10.133.70.1"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

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
    """`host`, `host:port`, `http://host[:port][/]` -> `host[:port]`. Raises ValueError."""
    value = text.strip()
    if value.lower().startswith("https://"):
        raise ValueError(f"the bridge serves plain http, not https: {text!r}")
    value = re.sub(r"^http://", "", value, flags=re.IGNORECASE).rstrip("/")
    if not _HOST.fullmatch(value):
        raise ValueError(f"must be a host name or address, optionally with :port, got {text!r}")
    return value


class BridgeClient:
    def __init__(self, host: str, password: str, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        token = base64.b64encode(f"{USER}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

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
        return Unreachable(f"the bridge at {self.host} answered {path} with HTTP {code}")


def _read_bounded(response: http.client.HTTPResponse, deadline: float) -> bytes | None:
    """The body, or None past MAX_BODY. Raises TimeoutError past the deadline (a server that
    trickles bytes would otherwise reset the per-read timeout forever)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(65536):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        if time.monotonic() > deadline:
            raise TimeoutError
        chunks.append(chunk)
    return b"".join(chunks)


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
