"""Which of pydicom's pixel-data plug-ins decodes each compressed transfer syntax.

Chosen by bench/dicom_decode.py on 512 × 512 16-bit CT-like frames:

- JPEG lossless and JPEG 2000: pylibjpeg (pylibjpeg-libjpeg, -openjpeg), as fast as GDCM or
  faster;
- JPEG-LS: pyjpegls (CharLS), about four times faster than libjpeg's JPEG-LS;
- 8-bit JPEG baseline and extended: Pillow, several times faster than libjpeg and GDCM; Pillow
  reads no 12-bit JPEG, so 12-bit extended goes to pylibjpeg;
- RLE: pydicom's own decoder, slower than pylibjpeg-rle (about 2 ms a frame against 0.4) but it
  answers a malformed frame with an error where pylibjpeg-rle can panic.

Naming the plug-in makes the decoder the same on every worker, whatever else is installed.
"""

from schemas.dicom import DICOM_ENCAPSULATED_SYNTAXES

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
DECODING_PLUGINS = {
    **dict.fromkeys(DICOM_ENCAPSULATED_SYNTAXES, "pylibjpeg"),
    **dict.fromkeys(_JPEG_LS, "pyjpegls"),
    RLE_LOSSLESS: "pydicom",
    JPEG_BASELINE: "pillow",
    JPEG_EXTENDED: "pillow",
}
"""The plug-in for each compressed syntax, for 8-bit samples."""
PILLOW_MAX_BITS = 8


def decoding_plugin(transfer_syntax: str, bits_stored: int) -> str:
    """The plug-in that decodes frames of `transfer_syntax`; "" (pydicom's own decoder) for the
    native syntaxes."""
    plugin = DECODING_PLUGINS.get(transfer_syntax, "")
    if plugin == "pillow" and bits_stored > PILLOW_MAX_BITS:
        return "pylibjpeg"
    return plugin
