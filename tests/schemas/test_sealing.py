"""Sealed payloads open only with their key, at their place, unaltered."""

import os
from pathlib import Path

import pytest

from schemas.sealing import (
    KEY_BYTES,
    NONCE_BYTES,
    PayloadKeyError,
    PayloadSealer,
    SealedPayloadError,
    write_key_file,
)

PAYLOAD = b'{"scores": [0.125, 0.875]}'
PLACE = "glimpse:image:job-1"


@pytest.fixture()
def sealer() -> PayloadSealer:
    return PayloadSealer(os.urandom(KEY_BYTES))


def test_a_sealed_payload_opens_at_its_place(sealer: PayloadSealer) -> None:
    sealed = sealer.seal(PAYLOAD, PLACE)

    assert sealer.open(sealed, PLACE) == PAYLOAD
    assert PAYLOAD not in sealed
    assert len(sealed) == 1 + NONCE_BYTES + len(PAYLOAD) + 16


def test_each_seal_takes_a_new_nonce(sealer: PayloadSealer) -> None:
    first, second = sealer.seal(PAYLOAD, PLACE), sealer.seal(PAYLOAD, PLACE)

    assert first[1 : 1 + NONCE_BYTES] != second[1 : 1 + NONCE_BYTES]
    assert first != second


def test_another_key_does_not_open_it(sealer: PayloadSealer) -> None:
    sealed = sealer.seal(PAYLOAD, PLACE)

    with pytest.raises(SealedPayloadError, match="does not open"):
        PayloadSealer(os.urandom(KEY_BYTES)).open(sealed, PLACE)


def test_a_payload_moved_to_another_jobs_key_does_not_open(sealer: PayloadSealer) -> None:
    sealed = sealer.seal(PAYLOAD, PLACE)

    with pytest.raises(SealedPayloadError):
        sealer.open(sealed, "glimpse:image:job-2")


@pytest.mark.parametrize("position", [0, 1, 1 + NONCE_BYTES, -1], ids=str)
def test_an_altered_byte_is_detected(sealer: PayloadSealer, position: int) -> None:
    sealed = bytearray(sealer.seal(PAYLOAD, PLACE))
    sealed[position] ^= 0x01

    with pytest.raises(SealedPayloadError):
        sealer.open(bytes(sealed), PLACE)


def test_a_payload_stored_in_clear_is_refused(sealer: PayloadSealer) -> None:
    with pytest.raises(SealedPayloadError, match="not sealed"):
        sealer.open(PAYLOAD, PLACE)


def test_a_written_key_file_is_read_back_and_private(tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path / "payload.key")

    sealed = PayloadSealer.from_key_file(key_file).seal(PAYLOAD, PLACE)

    assert PayloadSealer.from_key_file(key_file).open(sealed, PLACE) == PAYLOAD
    assert key_file.stat().st_mode & 0o077 == 0
    assert len(key_file.read_text().strip()) == 2 * KEY_BYTES


@pytest.mark.parametrize(
    "content", ["", "00" * (KEY_BYTES - 1), "zz" * KEY_BYTES, "00" * (KEY_BYTES + 1)]
)
def test_a_key_file_without_64_hex_digits_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "payload.key"
    key_file.write_text(content)

    with pytest.raises(PayloadKeyError, match="64 hexadecimal characters") as refused:
        PayloadSealer.from_key_file(key_file)
    assert content not in str(refused.value) or content == ""


def test_no_key_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PayloadKeyError, match="GLIMPSE_PAYLOAD_KEY_FILE is not set"):
        PayloadSealer.from_key_file(None)
    with pytest.raises(PayloadKeyError, match="unreadable"):
        PayloadSealer.from_key_file(tmp_path / "missing.key")
