"""Milliseconds to decode one 512 × 512 16-bit CT-like frame, for each transfer syntax the service
reads and each decoder plug-in pydicom finds for it.

The frame is a smooth phantom (a body ellipse, organs, bone) with noise, stored as signed 16-bit
(12 bits used) Hounsfield units; JPEG baseline and extended get its 8-bit rendering (baseline is
8-bit only), and JPEG extended also its unsigned 12-bit values. The test files' encoders write
them (tests/integration/dicom_codecs.py: pyjpegls, pylibjpeg-openjpeg, DCMTK's dcmcjpeg, pydicom).
Each figure is the median of `pydicom.pixels.pixel_array(dataset, decoding_plugin=...)` on the
parsed file, which is what the worker runs, the decoders' calls interleaved round by round; for
the native and deflated syntaxes (no plug-in) it is the read of the file and its pixels. The last
column is each decoder's time over the fastest one's for that case: the figure to trust on a
loaded machine.

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
SYNTAXES = list(DICOM_TRANSFER_SYNTAXES.items())
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


def encoded_file(syntax: str, bits: int) -> bytes:
    """The phantom in `syntax`: `bits` = 8 its 8-bit rendering, 12 its unsigned 12-bit values
    (JPEG extended), else its signed 16-bit ones (12 bits used)."""
    hu = phantom()
    if bits == 8:
        grey = np.clip((hu + 1000) / 2000 * 255, 0, 255).astype(np.uint8)
        return compressed(dicom_file(grey), UID(syntax))
    if bits == 12:
        unsigned = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        return compressed(dicom_file(unsigned, bits_stored=12), UID(syntax))
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


def plugin_decoders(dataset: pydicom.Dataset) -> dict[str, Callable[[], object] | None]:
    """A decoding call for each plug-in pydicom has for the file's syntax; None for one that
    refuses the file (GDCM and Pillow read no 12-bit JPEG extended)."""
    syntax = dataset.file_meta.TransferSyntaxUID
    decoders: dict[str, Callable[[], object] | None] = {}
    for plugin in sorted(get_decoder(syntax).available_plugins):
        decode = partial(pixel_array, dataset, decoding_plugin=plugin)
        try:
            decode()
        except RuntimeError:
            decoders[plugin] = None
        else:
            decoders[plugin] = decode
    return decoders


def rows(repeats: int) -> list[tuple[str, str, int, str, float, float]]:
    """(syntax, name, bits, decoder, ms, ms / fastest decoder's ms) for each case and decoder."""
    out = []
    cases = [(syntax, name, 8 if syntax in EIGHT_BIT else 16) for syntax, name in SYNTAXES]
    cases.insert(6, (EIGHT_BIT[1], "JPEG Extended, 12-bit", 12))
    for syntax, name, bits in cases:
        data = encoded_file(syntax, bits)
        dataset = pydicom.dcmread(io.BytesIO(data))
        decoders = plugin_decoders(dataset) or {"(native)": partial(read_pixels, data)}
        medians = medians_ms({p: d for p, d in decoders.items() if d is not None}, repeats)
        fastest = min(medians.values())
        for plugin in decoders:
            ms = medians.get(plugin, float("nan"))  # nan: the plug-in cannot decode this case
            out.append((syntax, name, bits, plugin, ms, ms / fastest))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"decode of one {SIZE}×{SIZE} frame, median of {args.repeats} (ms)")
    print(f"{'transfer syntax':<40} {'UID':<24} {'decoder':<10} {'ms':>8} {'/ fastest':>9}")
    for syntax, name, bits, plugin, ms, ratio in rows(args.repeats):
        chosen = decoding_plugin(syntax, bits) or "(native)"
        mark = " *" if chosen == plugin else ""
        figures = f"{ms:8.2f} {ratio:9.2f}" if ms == ms else f"{'cannot decode':>18}"
        print(f"{name[:40]:<40} {syntax:<24} {plugin:<10} {figures}{mark}")
    print("* the worker's choice (workers/dicom_codecs.py)")


if __name__ == "__main__":
    main()
