"""`glimpse explain` over many images: concurrent requests, files written per image and method."""

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from glimpse_client.calls import Target
from glimpse_client.client import AsyncClient
from glimpse_client.errors import GlimpseError
from glimpse_client.results import ExplainResult


@dataclass(frozen=True)
class ExplainJob:
    """What to ask for every image of the batch, and where its files go."""

    model: str
    methods: list[str]
    target: Target
    params: Mapping[str, Mapping[str, Any]]
    output: Mapping[str, Any]
    out_dir: Path
    timeout: float | None = None
    evaluate: bool = False


@dataclass
class BatchOutcome:
    written: dict[Path, list[Path]] = field(default_factory=dict)
    failed: dict[Path, GlimpseError] = field(default_factory=dict)


def output_folders(images: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    """One folder per image, named by its file's stem; a repeated stem gets `-2`, `-3`, …"""
    folders: dict[Path, Path] = {}
    taken: set[str] = set()
    for image in images:
        name, n = image.stem, 1
        while name in taken:
            n += 1
            name = f"{image.stem}-{n}"
        taken.add(name)
        folders[image] = out_dir / name
    return folders


def write_result(result: ExplainResult, folder: Path) -> list[Path]:
    """`response.json`, and per explanation `<method>-<class>.overlay.png`, `.heatmap.png`
    and `.npy` (the scores, float32) as far as the answer carries them."""
    folder.mkdir(parents=True, exist_ok=True)
    response = folder / "response.json"
    response.write_text(json.dumps(result.raw))
    written = [response]
    for explanation in result.explanations:
        stem = f"{explanation.method}-{explanation.target.class_index}"
        if explanation.overlay is not None:
            written.append(folder / f"{stem}.overlay.png")
            explanation.overlay.save(written[-1])
        if explanation.heatmap is not None:
            written.append(folder / f"{stem}.heatmap.png")
            explanation.heatmap.save(written[-1])
        if explanation.map is not None:
            written.append(folder / f"{stem}.npy")
            np.save(written[-1], explanation.map)
    return written


async def explain_all(
    client: AsyncClient,
    images: Sequence[Path],
    job: ExplainJob,
    concurrency: int,
    progress: TextIO = sys.stderr,
) -> BatchOutcome:
    """Explain every image with at most `concurrency` requests in flight; a progress line on
    `progress`. An image's error is recorded and the others go on."""
    outcome = BatchOutcome()
    folders = output_folders(images, job.out_dir)
    slots = asyncio.Semaphore(concurrency)

    def report(final: bool = False) -> None:
        done = len(outcome.written) + len(outcome.failed)
        failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
        progress.write(f"\rexplained {done}/{len(images)}{failed}" + ("\n" if final else ""))
        progress.flush()

    async def explain_one(image: Path) -> None:
        async with slots:
            try:
                result = await client.explain(
                    image,
                    job.model,
                    job.methods,
                    target=job.target,
                    params=job.params,
                    output=job.output,
                    evaluate=job.evaluate,
                    timeout=job.timeout,
                )
            except GlimpseError as error:
                outcome.failed[image] = error
            else:
                outcome.written[image] = write_result(result, folders[image])
            report()

    report()
    await asyncio.gather(*(explain_one(image) for image in images))
    report(final=True)
    return outcome
