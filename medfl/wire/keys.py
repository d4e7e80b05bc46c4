"""CurveZMQ key pairs on disk, and SSH-style fingerprints for enrollment.

A public key file (``<name>.key``) holds one line ``public-key = "<Z85>"``; the secret file
(``<name>.key_secret``, mode 0600 from creation) holds both keys. Fingerprints are
``SHA256:<unpadded base64 of SHA-256 of the 32 raw key bytes>``, as OpenSSH prints them.

References
----------
.. [1] ZeroMQ RFC 26/CURVEZMQ and RFC 32/Z85.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
import stat
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from medfl.errors import AuthError

__all__ = ["FINGERPRINT_FORM", "KeyPair", "check_fingerprint", "fingerprint", "generate_keypair", "read_keypair",
           "read_public_key", "write_keypair"]

_Z85 = re.compile(rb"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40})"\s*$')


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (Z85 text, 40 bytes each); ``secret`` is None for a public key alone.

    Parameters
    ----------
    public : bytes
        The Z85-encoded public key (40 bytes).
    secret : bytes or None
        The Z85-encoded secret key, never printed by ``repr``.

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ and RFC 32/Z85.
    """

    public: bytes
    secret: bytes | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"KeyPair(public={self.public!r}, secret={'<hidden>' if self.secret else None})"


def generate_keypair() -> KeyPair:
    """A fresh CURVE key pair from libzmq (libsodium's CSPRNG).

    Returns
    -------
    KeyPair
        Public and secret key, Z85-encoded.

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ; D. J. Bernstein, "Curve25519: new Diffie-Hellman speed records", 2006.
    """
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)


def fingerprint(public: bytes | str) -> str:
    """SSH-style fingerprint of a CURVE public key.

    Parameters
    ----------
    public : bytes or str
        The 40-character Z85 public key (or its 32 raw bytes).

    Returns
    -------
    str
        ``"SHA256:"`` followed by the unpadded base64 of SHA-256 of the 32 raw key bytes.

    Raises
    ------
    AuthError
        ``public`` is not a Z85 key.

    References
    ----------
    .. [1] OpenSSH ssh-keygen(1), ``-l``: SHA256 fingerprints in unpadded base64.
    """
    raw: bytes | None = bytes(public) if isinstance(public, (bytes, bytearray)) and len(public) == 32 \
        else _z85_raw(public)
    if raw is None:
        raise AuthError(f"{str(public)[:60]!r} is not a 40-character Z85 public key")
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


#: what ``fingerprint`` returns: the prefix and 43 characters of unpadded base64 (32 bytes)
FINGERPRINT_FORM = "SHA256: followed by 43 base64 characters (A-Z, a-z, 0-9, + and /), 50 characters in all"
_B64 = re.compile(r"[A-Za-z0-9+/]*")


def check_fingerprint(text: str) -> str:
    """Return ``text`` if it is a well-formed fingerprint, else say what is wrong with it.

    Only the form is checked (prefix, length, alphabet, a canonical SHA-256 digest), never
    closeness to a known fingerprint: a near miss is a different key.

    Parameters
    ----------
    text : str
        What the operator typed.

    Raises
    ------
    AuthError
        ``text`` is malformed; the message gives the expected form.

    References
    ----------
    .. [1] OpenSSH ssh-keygen(1), ``-l``: SHA256 fingerprints in unpadded base64.
    """
    body = text[len("SHA256:"):] if text.startswith("SHA256:") else None
    if body is None:
        why = "it does not start with 'SHA256:'"
    elif len(body) != 43:
        why = f"it has {len(body)} characters after 'SHA256:', not 43 (truncated or extended?)"
    elif not _B64.fullmatch(body):
        bad = sorted({c for c in body if not _B64.fullmatch(c)})
        why = f"it holds characters base64 does not use: {' '.join(repr(c) for c in bad)}"
    elif base64.b64encode(base64.b64decode(body + "=")).decode("ascii").rstrip("=") != body:
        why = "its last character cannot end the base64 of a SHA-256 digest"
    else:
        return text
    raise AuthError(f"malformed fingerprint {text[:80]!r}: {why}; a fingerprint is {FINGERPRINT_FORM}, as "
                    "'medfl-agent fingerprint' prints it on the hospital's machine")


def _z85_raw(text: bytes | str) -> bytes | None:
    """The 32 raw bytes of a canonical 40-character Z85 key, or None."""
    if isinstance(text, str):
        if not text.isascii():
            return None
        text = text.encode("ascii")
    if not isinstance(text, (bytes, bytearray)) or len(text) != 40 or not _Z85.fullmatch(bytes(text)):
        return None
    try:
        raw = z85.decode(bytes(text))
    except Exception:  # noqa: BLE001 - values above 2**32 per 5 characters raise struct.error
        return None
    return raw if len(raw) == 32 and z85.encode(raw) == bytes(text) else None


def _valid_z85(text: bytes | str) -> bool:
    return _z85_raw(text) is not None


def write_keypair(folder: str | pathlib.Path, name: str, pair: KeyPair, *, overwrite: bool = False
                  ) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` (0600) into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created if missing (mode 0700).
    name : str
        File stem.
    pair : KeyPair
        Must include the secret.
    overwrite : bool
        Replace existing files; refused by default.

    Returns
    -------
    (Path, Path)
        The public and the secret key file.

    Raises
    ------
    AuthError
        A file exists (and ``overwrite`` is false), the name is unsafe, or the secret is missing.

    References
    ----------
    .. [1] ZeroMQ RFC 32/Z85.
    """
    if pair.secret is None:
        raise AuthError("cannot write a key pair without its secret key")
    if not _NAME.fullmatch(name):
        raise AuthError(f"key name {name[:40]!r} is not allowed; use letters, digits, '.', '_' or '-' "
                        "(no path separators)")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub_path, sec_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for p in (pub_path, sec_path):
        if p.exists() and not overwrite:
            raise AuthError(f"{p} exists; refusing to overwrite a key (pass --force to replace it; the peer "
                            "must then be approved or pinned again)")
    head = f"# medfl CURVE key '{name}', fingerprint {fingerprint(pair.public)}\n"
    pub_text = head + f'public-key = "{pair.public.decode()}"\n'
    sec_text = head + "# SECRET: never share this file\n" + pub_text.split("\n", 1)[1] + \
        f'secret-key = "{pair.secret.decode()}"\n'
    _write(sec_path, sec_text, 0o600, overwrite)
    _write(pub_path, pub_text, 0o644, overwrite)
    return pub_path, sec_path


def _write(path: pathlib.Path, text: str, mode: int, overwrite: bool) -> None:
    """Write with ``mode`` from creation on; without ``overwrite`` an existing file is never replaced."""
    if not overwrite:
        try:
            _create(path, text, mode)
        except FileExistsError:
            raise AuthError(f"{path} appeared while writing keys; refusing to overwrite it") from None
        return
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    _create(tmp, text, mode)
    os.replace(tmp, path)


def _create(path: pathlib.Path, text: str, mode: int) -> None:
    """Create ``path`` (never an existing file) with ``mode`` from the start, write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(path: pathlib.Path) -> dict[str, bytes]:
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read key file {path}: {exc}") from None
    keys = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and _valid_z85(m.group(2)):
            keys[m.group(1)] = m.group(2).encode("ascii")
    return keys


def read_public_key(source: str | bytes | pathlib.Path) -> bytes:
    """A Z85 public key from a .key or .key_secret file, or a bare 40-character Z85 string.

    Parameters
    ----------
    source : str, bytes or Path
        File path or key text.

    Returns
    -------
    bytes
        The 40-character Z85 public key.

    Raises
    ------
    AuthError
        Neither a readable key file nor a Z85 key; the message says what to give instead.

    References
    ----------
    .. [1] ZeroMQ RFC 32/Z85.
    """
    text = str(source)
    # a file first: a path of exactly 40 Z85-alphabet characters (letters, digits, '/', '.', '-')
    # is also a well-formed Z85 string, and must not be taken for a key
    if not isinstance(source, bytes) and pathlib.Path(source).is_file():
        keys = _parse(pathlib.Path(source))
        if "public" not in keys:
            raise AuthError(f"{source} has no valid 'public-key = \"...\"' line; was it made by medfl init?")
        return keys["public"]
    if isinstance(source, (str, bytes)) and _valid_z85(source):
        return source.encode("ascii") if isinstance(source, str) else bytes(source)
    if isinstance(source, bytes):
        raise AuthError(f"{source[:60]!r} is not a 40-character Z85 public key; copy the key from the other "
                        "side's .key file")
    path = pathlib.Path(source)
    if not path.is_file():
        raise AuthError(f"{text!r} is neither a key file nor a 40-character Z85 public key; give the path of "
                        "the .key file the other side created")
    keys = _parse(path)
    if "public" not in keys:
        raise AuthError(f"{path} has no valid 'public-key = \"...\"' line; was it made by medfl init?")
    return keys["public"]


def read_keypair(secret_path: str | pathlib.Path) -> KeyPair:
    """Load a key pair from a ``.key_secret`` file, refusing files others can read.

    Parameters
    ----------
    secret_path : str or Path
        The secret key file.

    Returns
    -------
    KeyPair
        Both keys, checked to belong together.

    Raises
    ------
    AuthError
        Missing file, readable by group or others (``chmod 600`` fixes it), no secret key,
        or keys that do not match.

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ.
    """
    path = pathlib.Path(secret_path)
    if not path.is_file():
        raise AuthError(f"secret key file {path} not found; run 'init' to create a key pair")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuthError(f"secret key file {path} has mode {oct(mode)}; others can read it. Run: chmod 600 {path}")
    keys = _parse(path)
    if "public" not in keys or "secret" not in keys:
        raise AuthError(f"{path} lacks a public-key or secret-key line; it is not a medfl secret key file")
    if zmq.curve_public(keys["secret"]) != keys["public"]:
        raise AuthError(f"{path}: the public key does not belong to the secret key; the file is damaged")
    return KeyPair(public=keys["public"], secret=keys["secret"])
