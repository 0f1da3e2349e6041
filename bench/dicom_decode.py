"""Milliseconds to decode one 512 × 512 16-bit CT-like frame, for each transfer syntax the service
reads and each decoder plug-in pydicom finds for it.

The frame is a smooth phantom (a body ellipse, organs, bone) with noise, stored as signed 16-bit
(12 bits used) Hounsfield units; JPEG baseline and extended get its 8-bit rendering, since
baseline is 8-bit only and no encoder here writes a readable 12-bit process 4 stream. Each figure
is the median of repeated `pydicom.pixels.pixel_array(dataset, decoding_plugin=...)` calls on the
parsed file, which is what the worker runs; for the native and deflated syntaxes (no plug-in)
it is the read of the file and its pixels.

    python bench/dicom_decode.py [--repeats N]
"""

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from dicom_codecs import compressed  # noqa: E402
from dicom_files import dicom_file  # noqa: E402

from schemas.dicom import DICOM_NATIVE_SYNTAXES, DICOM_TRANSFER_SYNTAXES  # noqa: E402
from workers.dicom_codecs import decoding_plugin  # noqa: E402

EIGHT_BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
SIZE = 512


def phantom() -> np.ndarray:
    """A CT-like slice in Hounsfield units: air, a soft-tissue body, two organs, a bone ring."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40
    hu[((x + 0.4) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = -800  # a lung
    hu[((x - 0.4) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = 60
    ring = np.hypot(x, y * 1.4)
    hu[(ring > 0.15) & (ring < 0.22)] = 900
    return np.round(hu + rng.normal(0, 12, hu.shape)).astype(np.int16)


def encoded_file(syntax: str) -> bytes:
    hu = phantom()
    if syntax in EIGHT_BIT:
        grey = np.clip((hu + 1000) / 2000 * 255, 0, 255).astype(np.uint8)
        return compressed(dicom_file(grey), UID(syntax))
    native = UID(syntax) if syntax in DICOM_NATIVE_SYNTAXES else ExplicitVRLittleEndian
    data = dicom_file(hu, bits_stored=12, sop_class=CTImageStorage, transfer_syntax=native)
    return data if syntax in DICOM_NATIVE_SYNTAXES else compressed(data, UID(syntax))


def read_pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def medians_ms(decoders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The median time of each decoder, their calls interleaved round by round so that the load
    of a shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for decode in decoders.values():
        decode()
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            decode()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) * 1000 for name, spent in times.items()}


def rows(repeats: int) -> list[tuple[str, str, str, float, float]]:
    """(syntax, name, decoder, ms, ms / fastest decoder's ms) for each syntax and decoder."""
    out = []
    for syntax, name in DICOM_TRANSFER_SYNTAXES.items():
        data = encoded_file(syntax)
        dataset = pydicom.dcmread(io.BytesIO(data))
        plugins = sorted(get_decoder(syntax).available_plugins)
        decoders: dict[str, Callable[[], object]] = {
            plugin: partial(pixel_array, dataset, decoding_plugin=plugin) for plugin in plugins
        } or {"(native)": partial(read_pixels, data)}
        medians = medians_ms(decoders, repeats)
        fastest = min(medians.values())
        out.extend((syntax, name, plugin, ms, ms / fastest) for plugin, ms in medians.items())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"decode of one {SIZE}×{SIZE} frame, median of {args.repeats} (ms)")
    print(f"{'transfer syntax':<40} {'UID':<24} {'decoder':<10} {'ms':>8} {'/ fastest':>9}")
    for syntax, name, plugin, ms, ratio in rows(args.repeats):
        chosen = decoding_plugin(syntax, 8 if syntax in EIGHT_BIT else 12) or "(native)"
        mark = " *" if chosen == plugin else ""
        print(f"{name[:40]:<40} {syntax:<24} {plugin:<10} {ms:8.2f} {ratio:9.2f}{mark}")
    print("* the worker's choice (workers/dicom_codecs.py)")


if __name__ == "__main__":
    main()
