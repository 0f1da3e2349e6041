"""How every payload Glimpse stores in Redis is sealed: AES-256-GCM, bound to its Redis key.

Images, results and cached results are written by one side and read by the other, so the format
is part of the contract between the gateway and the workers, like the key names in
`schemas.keys`; it lives here so that there is one definition of it. A sealed payload is
`FORMAT_VERSION` (one byte), a random 96-bit nonce, then the ciphertext with its 16-byte tag.
The associated data is the Redis key (and, inside a hash, the field) the payload is stored
under: a ciphertext copied to another job's key does not open.

The key file holds the 256-bit key as 64 hexadecimal characters (`openssl rand -hex 32`);
surrounding whitespace is ignored. Rotation is not supported: a new key makes what is stored
unreadable, which for jobs and caches that expire within hours means they are computed again.
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
    """Seals and opens stored payloads under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(f"The payload key must be {KEY_BYTES} bytes, not {len(key)}.")
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path | None) -> "PayloadSealer":
        """The sealer of the key in `path`; PayloadKeyError (never quoting the file) if none."""
        if path is None:
            raise PayloadKeyError(
                f"{KEY_FILE_VARIABLE} is not set: every stored image and result is encrypted, "
                "so the gateway and the workers need the same key file "
                "(`openssl rand -hex 32 > payload.key`)."
            )
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise PayloadKeyError(f"The payload key file {path} is unreadable: {exc}") from exc
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(
                f"The payload key file {path} must hold {2 * KEY_BYTES} hexadecimal characters."
            )
        return cls(key)

    def seal(self, payload: bytes, stored_at: str) -> bytes:
        """`payload` encrypted and authenticated for the place `stored_at` (its Redis key)."""
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT_VERSION + nonce + self._aead.encrypt(nonce, payload, stored_at.encode())

    def open(self, sealed: bytes, stored_at: str) -> bytes:
        """The payload sealed for `stored_at`; SealedPayloadError if it does not open."""
        if not sealed.startswith(FORMAT_VERSION) or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SealedPayloadError(f"The payload stored at {stored_at} is not sealed.")
        nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, stored_at.encode())
        except InvalidTag as exc:
            raise SealedPayloadError(f"The payload stored at {stored_at} does not open.") from exc


def write_key_file(path: Path) -> Path:
    """Write a new random key to `path`, readable by its owner only, for a throwaway stack."""
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def result_field(record_key: str, field: str) -> str:
    """Where a payload inside a job record's hash is stored: its key and the field."""
    return f"{record_key}#{field}"
