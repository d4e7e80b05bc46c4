"""The invitation file: one-step enrollment of a hospital (``nodes invite`` -> ``medfl-agent enroll``).

An invitation is a small JSON file the operator hands to a hospital like a one-time password
(by whatever channel they trust for the coordinator's public key today). It names the
coordinator (endpoint, public key, federation name), the hospital's name, an expiry, and holds
a fresh CURVE key pair made for this invitation alone: its public half is on the coordinator's
allow-list as an *invitation key*, admitted by ZAP only to say ENROLL. The file's fields (all
but the secret) carry an HMAC-SHA256 under a key only the coordinator holds, so an edited file
is noticed and named, and the coordinator decides from its own record, never from the file.

Guessing an invitation means guessing a Curve25519 secret key (2**252 tries); a used, expired,
edited or forgotten one is refused with a message that says which (see
:mod:`coordinator.invitations`).

References
----------
.. [1] H. Krawczyk, M. Bellare, R. Canetti, "HMAC: Keyed-Hashing for Message Authentication", RFC 2104, 1997.
.. [2] ZeroMQ RFC 26/CURVEZMQ and RFC 27/ZAP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from medfl.errors import ConfigError
from medfl.wire.keys import KeyPair, _valid_z85, fingerprint

__all__ = ["FORMAT", "SUFFIX", "Invitation", "invitation_mac", "read_invitation"]

#: the value of the file's ``medfl_invitation`` field this version writes and reads
FORMAT = 1
#: the file name suffix ``nodes invite`` uses
SUFFIX = ".medfl"
#: the largest file read (an invitation is about 600 bytes)
MAX_BYTES = 64 * 1024
_FIELDS = ("id", "federation", "endpoint", "coordinator_key", "name", "created", "expires")


@dataclass(frozen=True)
class Invitation:
    """The fields of an invitation file (``secret`` is the invitation key's secret half, Z85)."""

    id: str
    federation: str
    endpoint: str
    coordinator_key: str
    name: str
    created: int
    expires: int
    secret: str
    mac: str

    @property
    def keys(self) -> KeyPair:
        """The invitation's CURVE key pair (its public half is on the coordinator's allow-list)."""
        secret = self.secret.encode("ascii")
        return KeyPair(public=zmq.curve_public(secret), secret=secret)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the invitation key (the coordinator's record is found by it)."""
        return fingerprint(self.keys.public)

    def signed_fields(self) -> dict[str, Any]:
        """The fields the MAC covers (all but ``secret`` and ``mac``), as the agent sends them in ENROLL."""
        return {k: getattr(self, k) for k in _FIELDS}

    def to_text(self) -> str:
        """The file's JSON text (with a format marker and a human-readable expiry)."""
        doc = {"medfl_invitation": FORMAT, **asdict(self),
               "expires_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires))}
        return json.dumps(doc, indent=2) + "\n"


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes the MAC covers: the signed fields as sorted, compact JSON."""
    return json.dumps({k: fields.get(k) for k in _FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def invitation_mac(key: bytes, fields: dict[str, Any]) -> str:
    """HMAC-SHA256 of :func:`canonical` ``(fields)`` under ``key``, hex."""
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def read_invitation(path: str | pathlib.Path) -> Invitation:
    """Read and check the form of an invitation file.

    Parameters
    ----------
    path : str or Path
        The ``.medfl`` file the operator sent.

    Returns
    -------
    Invitation
        Its fields (the MAC is checked by the coordinator, which alone holds the key).

    Raises
    ------
    ConfigError
        Not readable, not JSON, not an invitation, another format version, or a field of the
        wrong type; every problem is named.
    """
    p = pathlib.Path(path)
    try:
        raw = p.read_bytes()[: MAX_BYTES + 1]
    except OSError as exc:
        raise ConfigError([("invitation", f"cannot read {p}: {exc.strerror or exc}")], source=str(p)) from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError([("invitation", f"{p} is larger than {MAX_BYTES} bytes: not an invitation file")],
                          source=str(p))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([("invitation", f"{p} is not an invitation file (not JSON: {exc}); ask the operator for "
                            "the file 'medfl-coordinator nodes invite' wrote")], source=str(p)) from exc
    return _from_doc(doc, str(p))


def _from_doc(doc: Any, source: str) -> Invitation:
    if not isinstance(doc, dict) or "medfl_invitation" not in doc:
        raise ConfigError([("invitation", "not a medfl invitation (no 'medfl_invitation' field)")], source=source)
    if doc["medfl_invitation"] != FORMAT:
        raise ConfigError([("medfl_invitation", f"format {doc['medfl_invitation']!r} is not the one this agent "
                            f"reads ({FORMAT}); upgrade medfl-agent, or ask for an invitation from this "
                            "coordinator's version")], source=source)
    problems: list[tuple[str, str]] = []
    for key in ("id", "federation", "endpoint", "name", "mac"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            problems.append((key, f"must be a non-empty string, got {doc.get(key)!r:.80}"))
    for key in ("created", "expires"):
        if not isinstance(doc.get(key), int) or isinstance(doc.get(key), bool) or doc[key] < 0:
            problems.append((key, f"must be a non-negative integer (Unix seconds), got {doc.get(key)!r:.80}"))
    for key in ("coordinator_key", "secret"):
        if not isinstance(doc.get(key), str) or not _valid_z85(doc[key]):
            problems.append((key, "must be a 40-character Z85 key"))
    if isinstance(doc.get("endpoint"), str) and not doc["endpoint"].startswith(("tcp://", "ipc://")):
        problems.append(("endpoint", f"must be a ZeroMQ endpoint like tcp://fl.example.org:7777, got "
                                     f"{doc['endpoint']!r:.80}"))
    if problems:
        raise ConfigError(problems, source=source)
    return Invitation(**{k: doc[k] for k in (*_FIELDS, "secret", "mac")})
