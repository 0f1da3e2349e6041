"""How every payload Glimpse stores in Redis is sealed: AES-256-GCM, bound to its Redis key.

Images, results and cached results are written by one side and read by the other, so the format
is part of the contract between the gateway and the workers, like the key names in
`schemas.keys`; it lives here so that there is one definition of it. A sealed payload is
`FORMAT_VERSION` (one byte), a random 96-bit nonce, then the ciphertext with its 16-byte tag.
The associated data is the Redis key (and, inside a hash, the field) the payload is stored
under: a ciphertext copied to another job's key does not open.

The key file holds one or more 256-bit keys, each as 64 hexadecimal characters on a line of its
own (`openssl rand -hex 32`); blank lines and lines starting with `#` are ignored. The first key
seals; every key opens. So a key is rotated without losing what is stored: add the new key as a
later line everywhere, then move it first everywhere, and drop the old one once what it sealed
has expired (twice the result TTL, a job record's lifetime).
"""

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = b"\x01"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_VARIABLE = "GLIMPSE_PAYLOAD_KEY_FILE"


class PayloadKeyError(Exception):
    """No usable payload key: the file is not configured, unreadable or not 64 hex digits."""


class SealedPayloadError(Exception):
    """A stored payload that does not open: another key, another place, or altered."""


class PayloadSealer:
    """Seals under its first key and opens under any of its keys."""

    def __init__(self, key: bytes, *retired: bytes) -> None:
        for each in (key, *retired):
            if len(each) != KEY_BYTES:
                raise PayloadKeyError(
                    f"The payload key must be {KEY_BYTES} bytes, not {len(each)}."
                )
        self._aead = AESGCM(key)
        self._openers = [self._aead, *(AESGCM(each) for each in retired)]

    @classmethod
    def from_key_file(cls, path: Path | None) -> "PayloadSealer":
        """The sealer of the keys in `path`; PayloadKeyError (never quoting the file) if none."""
        if path is None:
            raise PayloadKeyError(
                f"{KEY_FILE_VARIABLE} is not set: every stored image and result is encrypted, "
                "so the gateway and the workers need the same key file "
                "(`openssl rand -hex 32 > payload.key`)."
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PayloadKeyError(f"The payload key file {path} is unreadable: {exc}") from exc
        keys = [
            _key_on_line(path, number, line.strip())
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
        if not keys:
            raise PayloadKeyError(f"The payload key file {path} holds no key.")
        return cls(*keys)

    def seal(self, payload: bytes, stored_at: str) -> bytes:
        """`payload` encrypted and authenticated for the place `stored_at` (its Redis key)."""
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT_VERSION + nonce + self._aead.encrypt(nonce, payload, stored_at.encode())

    def open(self, sealed: bytes, stored_at: str) -> bytes:
        """The payload sealed for `stored_at`; SealedPayloadError if it does not open."""
        if not sealed.startswith(FORMAT_VERSION) or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SealedPayloadError(f"The payload stored at {stored_at} is not sealed.")
        nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        for opener in self._openers:
            try:
                return opener.decrypt(nonce, ciphertext, stored_at.encode())
            except InvalidTag:
                continue
        raise SealedPayloadError(f"The payload stored at {stored_at} does not open.")


def _key_on_line(path: Path, number: int, line: str) -> bytes:
    """The key written on line `number` of the key file; PayloadKeyError naming only the line."""
    try:
        key = bytes.fromhex(line)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(
            f"Line {number} of the payload key file {path} must hold {2 * KEY_BYTES} "
            "hexadecimal characters."
        )
    return key


def write_key_file(path: Path) -> Path:
    """Write a new random key to `path`, readable by its owner only, for a throwaway stack."""
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def result_field(record_key: str, field: str) -> str:
    """Where a payload inside a job record's hash is stored: its key and the field."""
    return f"{record_key}#{field}"
