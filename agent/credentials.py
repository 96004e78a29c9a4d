"""The credential files load as the TLS client will load them.

One check for `tibber-agent check` and for `import-bridge` (which runs it on the bridge's
values before it writes anything): the CA must be usable, the key must belong to the
certificate. Problems come back as lines naming the [tibber] key and the file.
"""

from __future__ import annotations

import ssl

from .config import TibberSettings
from .tibber.connection import refuse_passphrase


def check_tls(t: TibberSettings) -> list[str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(t.ca_cert))
    except (ssl.SSLError, OSError) as e:
        return [f"[tibber] ca_cert: {t.ca_cert} is not a usable CA certificate ({_reason(e)})"]
    try:
        ctx.load_cert_chain(
            certfile=str(t.certificate), keyfile=str(t.private_key), password=refuse_passphrase
        )
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            return [f"[tibber] private_key: {t.private_key} does not belong to {t.certificate}"]
        return [f"[tibber] certificate: {t.certificate} or its key cannot be loaded ({_reason(e)})"]
    except OSError as e:
        return [f"[tibber] certificate: cannot read {e.filename}: {e.strerror}"]
    return []


def _reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or str(e).splitlines()[0]
