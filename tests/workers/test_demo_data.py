"""The synthetic lesion data set: deterministic, masks that match the class, PNG export."""

import io

import numpy as np
from PIL import Image

from workers.demo.data import LABELS, SIZE, make_dataset, make_sample, to_png_bytes


def test_same_seed_gives_identical_samples() -> None:
    first, second = make_sample(7), make_sample(7)
    assert first.label == second.label
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.mask, second.mask)


def test_different_seeds_differ() -> None:
    assert not np.array_equal(make_sample(1).image, make_sample(2).image)


def test_dataset_is_the_samples_of_consecutive_seeds() -> None:
    images, labels, masks = make_dataset(4, seed=10)
    assert images.shape == masks.shape == (4, SIZE, SIZE)
    assert images.dtype == np.float32 and masks.dtype == bool and labels.shape == (4,)
    sample = make_sample(12)
    np.testing.assert_array_equal(images[2], sample.image)
    assert labels[2] == sample.label


def test_sample_types_and_range() -> None:
    sample = make_sample(3)
    assert sample.image.dtype == np.float32 and sample.image.shape == (SIZE, SIZE)
    assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
    assert sample.label in range(len(LABELS))


def test_masks_match_the_class_and_lesions_are_bright() -> None:
    images, labels, masks = make_dataset(90, seed=500)
    areas = masks.sum(axis=(1, 2))
    assert set(labels.tolist()) == {0, 1, 2}
    assert (areas[labels == 0] == 0).all()
    assert (areas[labels != 0] > 0).all()
    assert areas[labels == 2].mean() > 3 * areas[labels == 1].mean()
    for image, mask in zip(images[labels != 0], masks[labels != 0], strict=True):
        assert image[mask].mean() > image[~mask].mean()


def test_png_round_trips_as_8_bit_grayscale() -> None:
    image = make_sample(5).image
    decoded = Image.open(io.BytesIO(to_png_bytes(image)))
    assert decoded.mode == "L" and decoded.size == (SIZE, SIZE)
    assert np.abs(np.asarray(decoded) / 255.0 - image).max() <= 0.5 / 255 + 1e-6
