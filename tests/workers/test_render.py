"""Rendering maps: normalisation, resizing, pooling, colour maps, PNG overlays and base64 scores."""

import base64
import io

import numpy as np
import pytest
from method_checks import EPS32
from PIL import Image

from workers.render import (
    COLORMAPS,
    apply_colormap,
    encode_scores_base64,
    normalize_map,
    pool_grid,
    render_heatmap,
    render_overlay,
    resize_map,
)

RNG = np.random.default_rng(0)


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_an_unsigned_map_is_scaled_to_its_maximum() -> None:
    values = np.array([[0.0, 2.0], [1.0, 4.0]])

    normalized = normalize_map(values, signed=False)

    assert normalized.dtype == np.float32
    # Quotients by a power of two: exact in float32.
    np.testing.assert_array_equal(normalized, [[0.0, 0.5], [0.25, 1.0]])


def test_a_signed_map_is_scaled_to_its_largest_magnitude() -> None:
    values = np.array([[-4.0, 2.0], [1.0, 0.0]])

    normalized = normalize_map(values, signed=True)

    # Quotients by a power of two: exact in float32.
    np.testing.assert_array_equal(normalized, [[-1.0, 0.5], [0.25, 0.0]])


@pytest.mark.parametrize("signed", [False, True])
def test_a_zero_map_stays_zero(signed: bool) -> None:
    normalized = normalize_map(np.zeros((3, 4)), signed=signed)

    assert normalized.shape == (3, 4)
    assert not normalized.any()


@pytest.mark.parametrize("signed", [False, True])
def test_normalised_maps_stay_in_range(signed: bool) -> None:
    values = RNG.normal(size=(16, 16)) if signed else RNG.random((16, 16)) * 7

    normalized = normalize_map(values, signed=signed)

    # The peak divided by itself is exactly ±1 in IEEE arithmetic.
    assert normalized.max() == 1.0 or normalized.min() == -1.0
    assert normalized.min() >= (-1.0 if signed else 0.0)
    assert normalized.max() <= 1.0


def test_resize_map_shape_and_type() -> None:
    values = RNG.random((7, 9)).astype(np.float32)

    larger = resize_map(values, 21, 30)
    smaller = resize_map(values, 3, 4)

    assert larger.shape == (21, 30)
    assert smaller.shape == (3, 4)
    assert larger.dtype == smaller.dtype == np.float32
    # Pillow's bilinear weights are non-negative doubles summing to 1 and each pass rounds to the
    # nearest float32: a convex combination rounded so never leaves [min, max].
    assert values.min() <= larger.min() and larger.max() <= values.max()
    assert values.min() <= smaller.min() and smaller.max() <= values.max()


def test_resize_map_keeps_a_constant_map_constant() -> None:
    # Weights summing to 1 within a few eps64, then two passes each rounded to float32.
    resized = resize_map(np.full((5, 5), 0.3), 17, 11)
    np.testing.assert_allclose(resized, 0.3, rtol=EPS32, atol=0)


def test_pool_grid_averages_equal_cells() -> None:
    values = np.arange(16, dtype=np.float32).reshape(4, 4)

    pooled = pool_grid(values, 2)

    assert pooled.dtype == np.float32
    # Sums of small integers and quotients by 4: exact.
    np.testing.assert_array_equal(pooled, [[2.5, 4.5], [10.5, 12.5]])


def test_pool_grid_splits_uneven_sizes_as_evenly_as_possible() -> None:
    values = np.arange(15, dtype=np.float32).reshape(3, 5)

    pooled = pool_grid(values, 2)

    # Rows split 1 + 2, columns 2 + 3.
    expected = [
        [values[:1, :2].mean(), values[:1, 2:].mean()],
        [values[1:, :2].mean(), values[1:, 2:].mean()],
    ]
    # Exact integer sums, one division each side, rounded once to float32 by the pooling.
    np.testing.assert_allclose(pooled, expected, rtol=EPS32, atol=0)


def test_pool_grid_total_sums_each_cell_and_keeps_the_sum() -> None:
    values = RNG.normal(size=(7, 9)).astype(np.float32)

    pooled = pool_grid(values, 3, total=True)

    # Rows split 2 + 2 + 3, columns 3 + 3 + 3.
    rows, columns = [0, 2, 4, 7], [0, 3, 6, 9]
    expected = [
        [values[rows[i] : rows[i + 1], columns[j] : columns[j + 1]].sum() for j in range(3)]
        for i in range(3)
    ]
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    # float32 round-off of 63 terms, relative to their magnitudes.
    tolerance = 63 * 2.0**-24 * float(np.abs(values).sum())
    assert abs(float(pooled.sum()) - float(values.sum())) <= tolerance


def test_pool_grid_of_one_cell_is_the_mean() -> None:
    values = RNG.random((6, 7))
    # A float64 mean of 42 values (error ~42 · eps64) rounded once to float32.
    np.testing.assert_allclose(pool_grid(values, 1), [[values.mean()]], rtol=EPS32, atol=0)


@pytest.mark.parametrize("n", [0, 4])
def test_pool_grid_rejects_grids_that_do_not_fit(n: int) -> None:
    with pytest.raises(ValueError):
        pool_grid(np.zeros((3, 5)), n)


def test_jet_runs_from_dark_blue_to_dark_red() -> None:
    ends = apply_colormap(np.array([[0.0, 1.0]]), "jet")

    assert ends.dtype == np.uint8
    assert ends.shape == (1, 2, 3)
    np.testing.assert_array_equal(ends[0, 0], [0, 0, 128])
    np.testing.assert_array_equal(ends[0, 1], [128, 0, 0])


def test_gray_is_the_identity_on_256_levels() -> None:
    levels = np.arange(256) / 255

    colours = apply_colormap(levels[None, :], "gray")[0]

    np.testing.assert_array_equal(colours, np.repeat(np.arange(256)[:, None], 3, axis=1))


def test_coolwarm_is_blue_neutral_red() -> None:
    low, middle, high = apply_colormap(np.array([[0.0, 0.5, 1.0]]), "coolwarm")[0].astype(int)

    assert low[2] > low[0]
    assert high[0] > high[2]
    assert middle.max() - middle.min() <= 2  # a neutral grey, to within a level of rounding


@pytest.mark.parametrize("name", ["viridis", "inferno"])
def test_perceptual_maps_brighten_steadily(name: str) -> None:
    colours = apply_colormap(np.linspace(0, 1, 256)[None, :], name)[0].astype(float)

    luminance = colours @ np.array([0.299, 0.587, 0.114])

    assert np.all(np.diff(luminance) >= -1.0)
    assert luminance[-1] - luminance[0] > 150


def test_every_colormap_is_known() -> None:
    assert set(COLORMAPS) == {"jet", "viridis", "inferno", "gray", "coolwarm"}


def test_unknown_colormap() -> None:
    with pytest.raises(ValueError, match="rainbow"):
        apply_colormap(np.zeros((2, 2)), "rainbow")


def test_overlay_is_a_png_of_the_image_size() -> None:
    display = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    values = RNG.random((9, 13))

    overlay = decode_png(render_overlay(display, values, "jet", 0.45))

    assert overlay.shape == (9, 13, 3)
    expected = 0.55 * display + 0.45 * apply_colormap(values, "jet")
    # Rounding to 8 bits (1/2) after a float32 blend of values up to 255: the weights' rounding,
    # two products and a sum, 4 roundings each within eps32 / 2 of 255.
    np.testing.assert_allclose(overlay, expected, atol=0.5 + 2 * EPS32 * 255)


def test_overlay_with_alpha_zero_is_the_image() -> None:
    display = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)

    overlay = decode_png(render_overlay(display, RNG.random((9, 13)), "viridis", 0.0))

    np.testing.assert_array_equal(overlay, display)


def test_overlay_with_alpha_one_is_the_heatmap() -> None:
    display = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    values = RNG.random((4, 5))

    overlay = decode_png(render_overlay(display, values, "inferno", 1.0))

    np.testing.assert_array_equal(overlay, decode_png(render_heatmap(values, "inferno")))


def test_overlay_needs_a_map_of_the_image_size() -> None:
    with pytest.raises(ValueError, match="size"):
        render_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), "jet", 0.5)


def test_heatmap_png() -> None:
    values = RNG.random((6, 8))

    heatmap = decode_png(render_heatmap(values, "coolwarm"))

    np.testing.assert_array_equal(heatmap, apply_colormap(values, "coolwarm"))


def test_base64_scores_decode_to_the_same_values() -> None:
    values = RNG.normal(size=(5, 7)).astype(np.float32)

    encoded = encode_scores_base64(values)

    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4").reshape(5, 7)
    np.testing.assert_array_equal(decoded, values)


def test_base64_scores_are_row_major_even_for_a_transposed_view() -> None:
    values = np.arange(6, dtype=np.float64).reshape(2, 3).T

    decoded = np.frombuffer(base64.b64decode(encode_scores_base64(values)), dtype="<f4")

    np.testing.assert_array_equal(decoded, [0, 3, 1, 4, 2, 5])
