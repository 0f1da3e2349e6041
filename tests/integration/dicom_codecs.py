"""Real compressed DICOM files: a native file re-encoded by a real encoder in each transfer syntax
the service decodes, and pydicom's own test files for those no encoder here writes.

Encoders: pydicom itself (RLE, deflate), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000) and
DCMTK's `dcmcjpeg` (JPEG baseline, extended and lossless; the Makefile installs DCMTK).
JPEG baseline takes 8-bit files; JPEG extended 8- or 12-bit unsigned ones.
"""

import io
import subprocess
import tempfile
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# The largest difference from the original a lossy encoding below may make, in stored units:
# JPEG-LS near-lossless bounds it by its NEAR parameter; the others by what the tests measure
# against their own tolerance.
NEAR_LOSSLESS_ERROR = 2
LOSSLESS = (
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
)
# dcmcjpeg's options for each syntax: +el writes process 14 with its default predictor, +e1
# process 14 with selection value 1; +sr keeps the lossy processes from stretching the pixels'
# min-max range over the sample depth (so stored values keep their meaning).
_DCMCJPEG_OPTIONS = {
    JPEGBaseline8Bit: ("+eb", "+sr"),
    JPEGExtended12Bit: ("+ee", "+sr"),
    JPEGLossless: ("+el",),
    JPEGLosslessSV1: ("+e1",),
}
_PYDICOM_OPTIONS: dict[UID, dict[str, object]] = {
    JPEGLSLossless: {},
    JPEGLSNearLossless: {"jls_error": NEAR_LOSSLESS_ERROR},
    JPEG2000Lossless: {},
    JPEG2000: {"j2k_psnr": [80.0]},  # of the 16-bit full scale
    RLELossless: {},
}


def compressed(data: bytes, syntax: UID) -> bytes:
    """The native DICOM file `data` re-encoded in `syntax` by a real encoder."""
    if syntax in _DCMCJPEG_OPTIONS:
        return _dcmcjpeg_encoded(data, _DCMCJPEG_OPTIONS[syntax])
    dataset = dcmread(io.BytesIO(data))
    if syntax == DeflatedExplicitVRLittleEndian:
        dataset.file_meta.TransferSyntaxUID = syntax
    else:
        dataset.compress(syntax, **_PYDICOM_OPTIONS[syntax])  # type: ignore[arg-type]
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


def bundled_file(name: str) -> bytes:
    """One of pydicom's bundled test files (pydicom and the pydicom-data package)."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's test file {name} is missing"
    return Path(str(path)).read_bytes()


def _dcmcjpeg_encoded(data: bytes, options: tuple[str, ...]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "in.dcm"), Path(folder, "out.dcm")
        source.write_bytes(data)
        subprocess.run(["dcmcjpeg", *options, str(source), str(target)], check=True, timeout=60)
        return target.read_bytes()
