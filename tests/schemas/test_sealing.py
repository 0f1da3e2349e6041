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
    "content", ["00" * (KEY_BYTES - 1), "zz" * KEY_BYTES, "00" * (KEY_BYTES + 1)]
)
def test_a_key_file_without_64_hex_digits_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "payload.key"
    key_file.write_text(content)

    with pytest.raises(PayloadKeyError, match="Line 1 .* 64 hexadecimal characters") as refused:
        PayloadSealer.from_key_file(key_file)
    assert content not in str(refused.value)


@pytest.mark.parametrize("content", ["", "\n\n", "# the key goes here\n"])
def test_a_key_file_without_a_key_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "payload.key"
    key_file.write_text(content)

    with pytest.raises(PayloadKeyError, match="holds no key"):
        PayloadSealer.from_key_file(key_file)


def test_after_a_rotation_the_new_key_seals_and_the_old_one_still_opens() -> None:
    old_key, new_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    before = PayloadSealer(old_key).seal(PAYLOAD, PLACE)
    rotated = PayloadSealer(new_key, old_key)

    after = rotated.seal(PAYLOAD, PLACE)

    assert rotated.open(before, PLACE) == PAYLOAD
    assert rotated.open(after, PLACE) == PAYLOAD
    assert PayloadSealer(new_key).open(after, PLACE) == PAYLOAD
    with pytest.raises(SealedPayloadError):
        PayloadSealer(old_key).open(after, PLACE)
    with pytest.raises(SealedPayloadError):
        rotated.open(before, "glimpse:image:job-2")  # every key still binds the place


def test_a_key_file_of_several_keys_seals_with_its_first(tmp_path: Path) -> None:
    keys = [os.urandom(KEY_BYTES) for _ in range(3)]
    key_file = tmp_path / "payload.key"
    key_file.write_text(
        f"# new, since the last rotation\n{keys[0].hex()}\n\n"
        f"# retired, kept until what it sealed expires\n  {keys[1].hex()}  \n{keys[2].hex()}\n"
    )
    sealer = PayloadSealer.from_key_file(key_file)

    sealed = sealer.seal(PAYLOAD, PLACE)

    assert PayloadSealer(keys[0]).open(sealed, PLACE) == PAYLOAD
    for key in keys[1:]:
        assert sealer.open(PayloadSealer(key).seal(PAYLOAD, PLACE), PLACE) == PAYLOAD
        with pytest.raises(SealedPayloadError):
            PayloadSealer(key).open(sealed, PLACE)


def test_a_bad_later_line_is_refused_by_its_number_alone(tmp_path: Path) -> None:
    bad = "ab" * (KEY_BYTES - 1)
    key_file = tmp_path / "payload.key"
    key_file.write_text(f"{os.urandom(KEY_BYTES).hex()}\n# retired\n{bad}\n")

    with pytest.raises(PayloadKeyError, match="Line 3 ") as refused:
        PayloadSealer.from_key_file(key_file)
    assert bad not in str(refused.value)


def test_no_key_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PayloadKeyError, match="GLIMPSE_PAYLOAD_KEY_FILE is not set"):
        PayloadSealer.from_key_file(None)
    with pytest.raises(PayloadKeyError, match="unreadable"):
        PayloadSealer.from_key_file(tmp_path / "missing.key")
