"""`explain_all`: bounded concurrency and one image's failure leaving the others be (a scripted
transport here; tests/integration/test_client_cli.py runs it against the real stack)."""

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
from glimpse_client import AsyncClient
from glimpse_client.batch import ExplainJob, explain_all

ANSWER = {
    "job_id": "j",
    "model": {"id": "m", "version": "1"},
    "predictions": [{"class_index": 0, "label": "a", "score": 1.0}],
    "explanations": [
        {
            "method": "gradcam",
            "target": {"class_index": 0, "label": "a"},
            "scores": {"shape": [1, 2], "values": [[0, 1]], "min": 0, "max": 1, "signed": False},
        }
    ],
}


def test_no_more_requests_than_the_concurrency_are_in_flight(tmp_path: Path) -> None:
    in_flight, most = 0, 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        if json.loads(request.content)["image"] == "YmFk":  # base64 of b"bad"
            return httpx.Response(400, json={"type": "urn:glimpse:problem:bad-image"})
        return httpx.Response(200, json=ANSWER)

    images = []
    for n in range(9):
        images.append(tmp_path / f"{n}.png")
        images[-1].write_bytes(b"bad" if n == 4 else b"png bytes")
    job = ExplainJob("m", ["gradcam"], "top1", {}, {"overlay": False}, tmp_path / "out")
    progress = io.StringIO()

    async def run() -> None:
        async with AsyncClient("http://glimpse.test", transport=httpx.MockTransport(answer)) as c:
            outcome = await explain_all(c, images, job, concurrency=3, progress=progress)
        assert set(outcome.failed) == {images[4]}
        assert len(outcome.written) == 8

    asyncio.run(run())
    assert most == 3
    assert progress.getvalue().endswith("\rexplained 9/9, 1 failed\n")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "0" / "gradcam-0.npy"), [[0, 1]])
