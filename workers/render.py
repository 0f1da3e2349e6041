"""Attribution maps to pictures and numbers: normalisation, resizing, colour maps, PNG, base64."""

import base64
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from schemas.explain import DegenerateKind

# Anchor colours (position in [0, 1], RGB in [0, 1]) that each 256-entry table interpolates.
_ANCHORS: dict[str, list[tuple[float, tuple[float, float, float]]]] = {
    "jet": [
        (0.0, (0.0, 0.0, 0.5)),
        (0.125, (0.0, 0.0, 1.0)),
        (0.375, (0.0, 1.0, 1.0)),
        (0.625, (1.0, 1.0, 0.0)),
        (0.875, (1.0, 0.0, 0.0)),
        (1.0, (0.5, 0.0, 0.0)),
    ],
    "viridis": [
        (0.0, (0.267, 0.005, 0.329)),
        (0.125, (0.278, 0.173, 0.478)),
        (0.25, (0.231, 0.318, 0.545)),
        (0.375, (0.173, 0.443, 0.557)),
        (0.5, (0.129, 0.565, 0.553)),
        (0.625, (0.153, 0.678, 0.506)),
        (0.75, (0.361, 0.784, 0.388)),
        (0.875, (0.667, 0.863, 0.196)),
        (1.0, (0.993, 0.906, 0.144)),
    ],
    "inferno": [
        (0.0, (0.001, 0.000, 0.014)),
        (0.125, (0.122, 0.047, 0.282)),
        (0.25, (0.333, 0.059, 0.427)),
        (0.375, (0.533, 0.133, 0.416)),
        (0.5, (0.729, 0.212, 0.333)),
        (0.625, (0.890, 0.349, 0.196)),
        (0.75, (0.976, 0.549, 0.039)),
        (0.875, (0.976, 0.788, 0.196)),
        (1.0, (0.988, 1.000, 0.643)),
    ],
    "gray": [(0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))],
    # Diverging: blue below the middle, a light grey neutral at 0.5, red above.
    "coolwarm": [
        (0.0, (0.230, 0.299, 0.754)),
        (0.25, (0.552, 0.690, 0.996)),
        (0.5, (0.865, 0.865, 0.865)),
        (0.75, (0.958, 0.604, 0.482)),
        (1.0, (0.706, 0.016, 0.150)),
    ],
}


def _lookup_table(anchors: list[tuple[float, tuple[float, float, float]]]) -> np.ndarray:
    positions = np.array([position for position, _ in anchors])
    colours = np.array([colour for _, colour in anchors])
    levels = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(levels, positions, colours[:, c]) for c in range(3)], axis=1)
    return np.rint(table * 255).astype(np.uint8)


_TABLES = {name: _lookup_table(anchors) for name, anchors in _ANCHORS.items()}

COLORMAPS = tuple(_TABLES)
"""The colour map names `apply_colormap` knows."""


def normalize_map(values: np.ndarray, signed: bool) -> np.ndarray:
    """Scale a map to [0, 1] by its maximum, or a signed one to [-1, 1] by its largest |value|.

    A map that is zero everywhere stays zero. Returns float32.
    """
    values = np.asarray(values, dtype=np.float32)
    if signed:
        peak = float(np.abs(values).max(initial=0.0))
        return values / peak if peak > 0 else np.zeros_like(values)
    peak = float(values.max(initial=0.0))
    # Unsigned maps are >= 0 by contract; the clip keeps rounding noise out of [0, 1].
    return np.clip(values / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(values)


def resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H×W map to height×width, float32 (antialiased when shrinking)."""
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def pool_grid(values: np.ndarray, n: int, *, total: bool = False) -> np.ndarray:
    """Average an H×W map over an n×n grid of cells, as equal in size as the sizes allow.

    With `total`, each cell holds the sum of its values instead, so that the grid sums to what
    the map sums to (for raw attributions, whose sum has a meaning).
    """
    height, width = values.shape
    if not 1 <= n <= min(height, width):
        raise ValueError(f"a {n}×{n} grid does not fit a {height}×{width} map")
    rows = np.arange(n + 1) * height // n
    columns = np.arange(n + 1) * width // n
    sums = np.add.reduceat(
        np.add.reduceat(np.asarray(values, dtype=np.float64), rows[:-1], axis=0),
        columns[:-1],
        axis=1,
    )
    if total:
        return sums.astype(np.float32)
    counts = np.outer(np.diff(rows), np.diff(columns))
    return (sums / counts).astype(np.float32)


def apply_colormap(values01: np.ndarray, name: str) -> np.ndarray:
    """Colour an H×W map with values in [0, 1]: uint8 H×W×3 RGB.

    Signed maps in [-1, 1] go in as (v + 1) / 2, so zero lands on a diverging map's neutral middle.
    """
    table = _TABLES.get(name)
    if table is None:
        raise ValueError(f"unknown colormap {name!r}; known: {', '.join(COLORMAPS)}")
    levels = np.clip(np.nan_to_num(values01, nan=0.0), 0.0, 1.0)
    return table[np.rint(levels * 255).astype(np.uint8)]


_BLEND_ROWS = 256


WARNING_LABELS: dict[DegenerateKind, str] = {
    "all_zero": "! zero map",
    "constant": "! flat map",
    "non_finite": "! NaN map",
    "not_converged": "! not converged",
}
"""The words burned into the corner of an overlay whose map carries a warning."""
WARNING_BACKGROUND = (0, 0, 0)
WARNING_INK = (255, 214, 0)


def render_overlay(
    display: np.ndarray,
    values01: np.ndarray,
    colormap: str,
    alpha: float,
    *,
    warning: DegenerateKind | None = None,
) -> bytes:
    """PNG of the colour-mapped map blended over the picture (`blend_overlay`)."""
    return encode_png(blend_overlay(display, values01, colormap, alpha, warning=warning))


def blend_overlay(
    display: np.ndarray,
    values01: np.ndarray,
    colormap: str,
    alpha: float,
    *,
    warning: DegenerateKind | None = None,
) -> np.ndarray:
    """The colour-mapped map blended over the picture: (1 - alpha) image + alpha colour, uint8
    H×W×3.

    `display` is uint8 H×W×3 and `values01` an H×W map in [0, 1] of the same size. With a
    `warning`, its label is burned into the top-left corner (`mark_warning`).
    """
    if display.shape[:2] != values01.shape:
        raise ValueError(f"map {values01.shape} and image {display.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    colours = apply_colormap(values01, colormap)
    blended = np.empty_like(display)
    # In bands of rows: float copies of a whole large picture would cost 12 bytes per pixel each.
    for top in range(0, display.shape[0], _BLEND_ROWS):
        rows = slice(top, top + _BLEND_ROWS)
        band = (1.0 - alpha) * display[rows].astype(np.float32) + alpha * colours[rows].astype(
            np.float32
        )
        blended[rows] = np.rint(band).astype(np.uint8)
    return blended if warning is None else mark_warning(blended, WARNING_LABELS[warning])


def mark_warning(rgb: np.ndarray, label: str) -> np.ndarray:
    """`rgb` (uint8 H×W×3) with `label` in `WARNING_INK` on a `WARNING_BACKGROUND` box in its
    top-left corner, not antialiased (every pixel of the box is one of the two colours), the
    text a twelfth of the shorter side tall (at least 8 pixels) and cut off where it does not
    fit."""
    image = Image.fromarray(rgb, mode="RGB")
    size = max(8, min(image.size) // 12)
    font = ImageFont.load_default(size=size)
    pad = max(1, size // 4)
    # The ink drawn alone first: its own extent, not the font's metrics, sizes the box.
    ink = Image.new("1", image.size)
    ImageDraw.Draw(ink).text((pad, pad), label, font=font, fill=1)
    extent = ink.getbbox()
    if extent is None:
        return rgb
    box = (0, 0, min(extent[2] + pad, image.width), min(extent[3] + pad, image.height))
    image.paste(WARNING_BACKGROUND, box)
    image.paste(WARNING_INK, (0, 0), ink)
    return np.asarray(image)


def render_heatmap(values01: np.ndarray, colormap: str) -> bytes:
    """PNG of the colour-mapped map alone."""
    return encode_png(apply_colormap(values01, colormap))


def encode_scores_base64(values: np.ndarray) -> str:
    """Base64 of the values as little-endian float32 in row-major order."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG of a uint8 H×W×3 RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
