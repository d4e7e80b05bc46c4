"""CURVE key files and fingerprints, including the ways they go wrong."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest
from zmq.utils import z85

from medfl.errors import AuthError
from medfl.wire import fingerprint, generate_keypair, read_keypair, read_public_key, write_keypair


def test_write_and_read(tmp_path):
    pair = generate_keypair()
    pub, sec = write_keypair(tmp_path / "keys", "agent", pair)
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert read_public_key(pub) == pair.public
    assert read_public_key(sec) == pair.public
    assert read_public_key(pair.public.decode()) == pair.public
    assert read_keypair(sec) == pair
    assert "secret" not in pub.read_text().replace("SECRET", "")
    assert pair.secret.decode() not in repr(pair)


def test_fingerprint_is_sshlike():
    pair = generate_keypair()
    raw = z85.decode(pair.public)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert fingerprint(pair.public) == expected == fingerprint(pair.public.decode())


def test_refuses_to_overwrite(tmp_path):
    write_keypair(tmp_path, "a", generate_keypair())
    with pytest.raises(AuthError, match="--force"):
        write_keypair(tmp_path, "a", generate_keypair())
    write_keypair(tmp_path, "a", generate_keypair(), overwrite=True)


def test_bad_inputs(tmp_path):
    with pytest.raises(AuthError, match="neither a key file"):
        read_public_key("not-a-key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(AuthError, match="public-key"):
        read_public_key(junk)
    with pytest.raises(AuthError, match="not found"):
        read_keypair(tmp_path / "missing.key_secret")
    pub, sec = write_keypair(tmp_path, "b", generate_keypair())
    with pytest.raises(AuthError, match="secret-key"):
        os.chmod(pub, 0o600)
        read_keypair(pub)
    os.chmod(sec, 0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        read_keypair(sec)


def test_mismatched_pair_is_detected(tmp_path):
    a, b = generate_keypair(), generate_keypair()
    _, sec = write_keypair(tmp_path, "x", a)
    text = sec.read_text().replace(a.public.decode(), b.public.decode())
    sec.write_text(text)
    os.chmod(sec, 0o600)
    with pytest.raises(AuthError, match="does not belong"):
        read_keypair(sec)


@pytest.mark.parametrize("text", ["#" * 40, "~" * 40, "a" * 39, "a b" * 20, "\u00e9" * 40, ""])
def test_invalid_z85_is_an_auth_error(text):
    with pytest.raises(AuthError):
        read_public_key(text)
    with pytest.raises(AuthError, match="Z85"):
        fingerprint(text)


def test_fingerprint_of_raw_bytes_matches_z85():
    pair = generate_keypair()
    assert fingerprint(z85.decode(pair.public)) == fingerprint(pair.public)


def test_bytes_key_and_directories(tmp_path):
    pair = generate_keypair()
    assert read_public_key(pair.public) == pair.public
    with pytest.raises(AuthError, match="Z85"):
        read_public_key(b"short")
    with pytest.raises(AuthError, match="neither a key file"):
        read_public_key(tmp_path)
    with pytest.raises(AuthError, match="not found"):
        read_keypair(tmp_path)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 100])
def test_unsafe_key_names_are_refused(tmp_path, name):
    with pytest.raises(AuthError, match="letters, digits"):
        write_keypair(tmp_path, name, generate_keypair())
    assert list(tmp_path.iterdir()) == []


def test_secret_file_is_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        _, sec = write_keypair(tmp_path, "u", generate_keypair())
        _, sec2 = write_keypair(tmp_path, "u", generate_keypair(), overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600 == stat.S_IMODE(sec2.stat().st_mode)
    assert not list(tmp_path.glob("*.tmp"))


def test_refusal_leaves_existing_keys_untouched(tmp_path):
    first = generate_keypair()
    pub, sec = write_keypair(tmp_path, "n", first)
    pub.unlink()  # only the secret remains: still refused, nothing written
    with pytest.raises(AuthError, match="exists"):
        write_keypair(tmp_path, "n", generate_keypair())
    assert read_keypair(sec) == first and not pub.exists()


def test_public_file_never_holds_the_secret(tmp_path):
    pair = generate_keypair()
    pub, _ = write_keypair(tmp_path, "p", pair)
    text = pub.read_text()
    assert pair.secret.decode() not in text and fingerprint(pair.public) in text
    with pytest.raises(AuthError, match="secret-key"):
        os.chmod(pub, 0o600)
        read_keypair(pub)


def test_a_key_file_whose_path_looks_like_z85_is_read_as_a_file(tmp_path, monkeypatch):
    # "/tmp/segdemo12/hospital-a/keys/agent.key" is 40 Z85-alphabet characters: it once approved a
    # "key" spelled by the path instead of the key in the file
    import pathlib

    pair = generate_keypair()
    monkeypatch.chdir(tmp_path)
    folder = pathlib.Path("abcdefghijklmnopqrstuvwxyz0123")
    pub, _ = write_keypair(folder, "agent", pair)
    short = folder / pub.name  # "abcdefghijklmnopqrstuvwxyz0123/agent.key"
    assert len(str(short)) == 40
    assert read_public_key(str(short)) == pair.public
    assert read_public_key(short) == pair.public
