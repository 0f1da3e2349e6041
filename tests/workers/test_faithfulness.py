"""`workers.faithfulness` against plain loops and against Quantus 0.6 on a tiny model.

Where Quantus defines a metric differently, the test makes the two definitions meet and the
difference is named beside it:

- Pointing game: Quantus counts a hit when any pixel of the map's maximum value lies in the mask,
  with no tolerance; Glimpse takes the first maximum (row-major) and a tolerance of a few pixels
  (Zhang et al.). With unique maxima and a tolerance of 0 they agree.
- Relevance mass: Quantus sums the map as given; Glimpse sums its positive part (Arras et al.
  count positive relevance). On non-negative maps they agree.
- Deletion: Quantus's `PixelFlipping` curve starts after the first step and its AUC is
  `np.trapz` with dx = 1 over the steps; Glimpse's curve starts at the untouched image and its AUC
  is over the fraction removed, [0, 1]. The curves' common points agree. Quantus's "black" is each
  image's darkest value; the test gives both the pixel value 0 explicitly.
- Randomisation: Quantus's MPRT re-draws every module that has `reset_parameters` (BatchNorm
  too), Glimpse convolutions and linear layers; on a model with only those they re-draw the same
  layers, each after seeding the generator (Quantus with seed + 1).
- Insertion has no Quantus counterpart in 0.6: it is checked against a plain loop only.
"""

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import spearmanr
from torch import nn

from schemas.evaluation import EVALUATION_PASSES, EVALUATION_STEPS
from schemas.methods import PARAMS_BY_METHOD, MethodParams
from workers import faithfulness
from workers.methods import Normalisation, explain

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import quantus

SIZE = 20
NORMALISATION = Normalisation((0.5,), (0.25,))
BLACK = (0.0 - 0.5) / 0.25
EPS32 = float(np.finfo(np.float32).eps)


def tiny_model(dtype: torch.dtype) -> nn.Module:
    """Convolutions, ReLUs, a pool and a linear head: every parameter has `reset_parameters`."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    return model.to(dtype).eval().requires_grad_(False)


def images(count: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    pixels = torch.rand((count, 1, SIZE, SIZE), generator=generator, dtype=torch.float64)
    return ((pixels - 0.5) / 0.25).to(dtype)


def random_maps(count: int, seed: int = 5) -> np.ndarray:
    """Continuous random maps: no two pixels tie, so every ordering is unambiguous."""
    return np.random.default_rng(seed).standard_normal((count, SIZE, SIZE))


def probability(model: nn.Module, image: np.ndarray, target: int) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(image)[None, None]).double()[0]
    return float(torch.softmax(logits, dim=0)[target])


def loop_figures(
    model: nn.Module, image: np.ndarray, target: int, saliency: np.ndarray, fill: np.ndarray
) -> tuple[float, float, float]:
    """Deletion AUC, insertion AUC and top-10 % drop of one image, one forward pass at a time."""
    order = np.argsort(-saliency.ravel(), kind="stable")
    # The blur baseline: σ = 5 % of the side, kernel cut at 3σ rounded up, mirrored edges.
    sigma = 0.05 * SIZE
    start = ndimage.gaussian_filter(
        image, sigma, mode="mirror", truncate=np.ceil(3 * sigma) / sigma
    )
    deleted, inserted = [], []
    for k in range(EVALUATION_STEPS + 1):
        chosen = order[: round(k * image.size / EVALUATION_STEPS)]
        removed = image.copy().ravel()
        removed[chosen] = fill.ravel()[chosen]
        restored = start.copy().ravel()
        restored[chosen] = image.ravel()[chosen]
        deleted.append(probability(model, removed.reshape(image.shape), target))
        inserted.append(probability(model, restored.reshape(image.shape), target))
    fractions = np.linspace(0.0, 1.0, EVALUATION_STEPS + 1)
    top = order[: round(0.1 * image.size)]
    removed = image.copy().ravel()
    removed[top] = fill.ravel()[top]
    drop = deleted[0] - probability(model, removed.reshape(image.shape), target)
    return (
        float(np.trapezoid(deleted, fractions)),
        float(np.trapezoid(inserted, fractions)),
        drop,
    )


@pytest.mark.parametrize(
    ("params", "fill_of"),
    [
        (PARAMS_BY_METHOD["saliency"](), lambda image: np.full_like(image, BLACK)),
        (
            PARAMS_BY_METHOD["deeplift"](baseline="mean"),
            lambda image: np.full_like(image, image.mean()),
        ),
    ],
    ids=["black-default", "method-baseline-mean"],
)
def test_evaluation_matches_a_plain_loop(params: MethodParams, fill_of: object) -> None:
    model = tiny_model(torch.float64)
    inputs = images(4, torch.float64)
    targets = torch.tensor([0, 1, 2, 1])
    maps = random_maps(4)
    figures = faithfulness.evaluate(
        model, inputs, targets, torch.from_numpy(maps), params, NORMALISATION
    )
    assert callable(fill_of)
    for i, figure in enumerate(figures):
        image = inputs[i, 0].numpy()
        expected = loop_figures(model, image, int(targets[i]), maps[i], fill_of(image))
        # Both in float64 through the same operations: only summation order differs.
        actual = (figure.deletion_auc, figure.insertion_auc, figure.top10_drop)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    # The figures must depend on the map: the reversed order deletes the least relevant first.
    reversed_figures = faithfulness.evaluate(
        model, inputs, targets, torch.from_numpy(-maps), params, NORMALISATION
    )
    assert any(
        abs(a.deletion_auc - b.deletion_auc) > 1e-6
        for a, b in zip(figures, reversed_figures, strict=True)
    )


def test_curves_are_batched_in_evaluation_passes_per_map() -> None:
    model = tiny_model(torch.float64)
    calls: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return model(batch)

    maps = torch.from_numpy(random_maps(5))
    fill = torch.full((5, 1, SIZE, SIZE), BLACK, dtype=torch.float64)
    faithfulness.curves(
        forward,
        images(5, torch.float64),
        torch.zeros(5, dtype=torch.long),
        maps,
        fill,
        max_batch=50,
    )
    assert sum(calls) == 5 * EVALUATION_PASSES
    assert max(calls) <= 50
    assert len(calls) == 3  # two rows of 22 images a call, then one


def test_deletion_curve_matches_quantus_pixel_flipping() -> None:
    model = tiny_model(torch.float32)
    inputs = images(3, torch.float32)
    targets = np.array([0, 2, 1])
    maps = random_maps(3).astype(np.float32)
    fill = torch.full_like(inputs, BLACK)
    deletion, _ = faithfulness.curves(
        model, inputs, torch.from_numpy(targets), torch.from_numpy(maps), fill
    )
    metric = quantus.PixelFlipping(
        features_in_step=SIZE * SIZE // EVALUATION_STEPS,
        perturb_baseline=BLACK,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    theirs = metric(
        model=model,
        x_batch=inputs.numpy(),
        y_batch=targets,
        a_batch=maps[:, None],
        device="cpu",
        softmax=True,
        channel_first=True,
    )
    # float32 forward passes in different batches: each logit a sum of at most 54 products
    # (3×3×6), three layers deep; softmax probabilities move by at most the logits' error.
    logits = model(inputs).abs().max().item()
    bound = 3 * 54 * EPS32 * (1 + logits)
    np.testing.assert_allclose(deletion[:, 1:].numpy(), np.array(theirs), rtol=0, atol=bound)


def test_pointing_game_matches_quantus_without_tolerance() -> None:
    maps = random_maps(40, seed=8)
    masks = np.zeros((40, SIZE, SIZE), dtype=bool)
    rng = np.random.default_rng(9)
    for mask in masks:
        y, x = rng.integers(0, SIZE - 6, size=2)
        mask[y : y + 6, x : x + 6] = True
    ours = faithfulness.pointing_hits(maps, masks, tolerance=0)
    theirs = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
        model=None,
        x_batch=maps[:, None],
        y_batch=np.zeros(40, dtype=int),
        a_batch=maps[:, None],
        s_batch=masks[:, None].astype(float),
    )
    np.testing.assert_array_equal(ours, np.array(theirs, dtype=bool))
    assert 0 < ours.sum() < len(ours)


def test_pointing_tolerance_is_chebyshev_distance_to_the_mask() -> None:
    mask = np.zeros((1, SIZE, SIZE), dtype=bool)
    mask[0, 10:12, 10:12] = True
    for y, x, hit in [
        (10, 10, True),
        (7, 10, True),
        (6, 10, False),
        (13, 14, True),
        (14, 15, False),
    ]:
        saliency = np.zeros((1, SIZE, SIZE))
        saliency[0, y, x] = 1.0
        # The plain definition: some mask pixel within 3 pixels in both directions.
        near = any(
            abs(y - my) <= 3 and abs(x - mx) <= 3
            for my, mx in zip(*np.nonzero(mask[0]), strict=True)
        )
        assert near == hit
        assert bool(faithfulness.pointing_hits(saliency, mask, tolerance=3)[0]) == hit


def test_relevance_mass_matches_quantus_on_non_negative_maps() -> None:
    maps = np.abs(random_maps(10, seed=4))
    masks = np.random.default_rng(2).random((10, SIZE, SIZE)) < 0.2
    ours = faithfulness.relevance_mass(maps, masks)
    theirs = quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False, abs=False)(
        model=None,
        x_batch=maps[:, None],
        y_batch=np.zeros(10, dtype=int),
        a_batch=maps[:, None],
        s_batch=masks[:, None].astype(float),
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    # Negative relevance is left out, as Arras et al. define the mass.
    signed = random_maps(10, seed=4)
    expected = [
        np.clip(m, 0, None)[k].sum() / np.clip(m, 0, None).sum()
        for m, k in zip(signed, masks, strict=True)
    ]
    np.testing.assert_allclose(faithfulness.relevance_mass(signed, masks), expected, rtol=1e-12)
    np.testing.assert_allclose(faithfulness.lesion_share(masks), masks.mean(axis=(1, 2)))


def test_rank_correlation_is_spearmans_with_ties() -> None:
    first = np.round(random_maps(6, seed=1), 1)  # rounded: many ties
    second = np.round(first + 0.5 * random_maps(6, seed=2), 1)
    expected = [
        spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(first, second, strict=True)
    ]
    np.testing.assert_allclose(faithfulness.rank_correlation(first, second), expected, rtol=1e-12)
    assert np.isnan(faithfulness.rank_correlation(np.ones((1, 3, 3)), first[:1, :3, :3]))[0]


def saliency_maps(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    attribution = explain("saliency", model, inputs, targets, {}, cam_layer="")
    return attribution.values.double().numpy()


def test_cascading_randomisation_matches_quantus_mprt() -> None:
    model = tiny_model(torch.float32)
    inputs = images(4, torch.float32)
    targets = torch.tensor([0, 1, 2, 0])
    before = {name: p.clone() for name, p in model.state_dict().items()}
    cuts = faithfulness.randomisation_cuts(model)
    assert cuts == ["6", "2", "0"]
    original = saliency_maps(model, inputs, targets)
    ours = []
    for depth in range(1, len(cuts) + 1):
        with faithfulness.randomised(model, cuts[:depth], seed=43) as randomised:
            after = saliency_maps(randomised, inputs, targets)
        ours.append(faithfulness.rank_correlation(np.abs(original), np.abs(after)))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name

    def explain_func(
        model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object
    ) -> np.ndarray:
        return saliency_maps(model, torch.from_numpy(inputs), torch.from_numpy(targets))[:, None]

    metric = quantus.MPRT(
        layer_order="top_down", seed=42, disable_warnings=True, return_average_correlation=False
    )
    theirs = metric(
        model=model,
        x_batch=inputs.numpy(),
        y_batch=targets.numpy(),
        a_batch=original[:, None].astype(np.float32),
        explain_func=explain_func,
        device="cpu",
        channel_first=True,
    )
    # Quantus also compares the trained model's maps with themselves, under "original".
    np.testing.assert_allclose(theirs["original"], 1.0, rtol=0, atol=1e-12)
    layers = [name for name in theirs if name != "original"]
    assert layers == cuts
    # The same re-drawn weights give the same maps (one explain function); only the correlation's
    # float64 arithmetic differs (Quantus: scipy's spearmanr), a few ulps of a value ≤ 1.
    for name, correlations in zip(layers, ours, strict=True):
        np.testing.assert_allclose(correlations, theirs[name], rtol=0, atol=1e-12)
    # Re-drawing every layer leaves little of the map: the check can tell.
    assert np.mean(ours[-1]) < 0.5


def test_randomisation_reaches_methods_that_cache_a_rewritten_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    model.requires_grad_(False)
    inputs, targets = images(2, torch.float32), torch.tensor([0, 1])

    def lrp() -> torch.Tensor:
        # LRP folds each BatchNorm into the convolution before it and caches the folded copy.
        return explain(
            "lrp", model, inputs, targets, {}, cam_layer="", normalisation=NORMALISATION
        ).values

    original = lrp()
    cuts = faithfulness.randomisation_cuts(model)
    assert cuts == ["8", "3", "0"]
    # The convolutions only: those are what the folded copy holds (the head it shares).
    with faithfulness.randomised(model, cuts[1:]) as _:
        randomised_map = lrp()
    assert not torch.allclose(randomised_map, original)
    torch.testing.assert_close(lrp(), original, rtol=0, atol=0)
