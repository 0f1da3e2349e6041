"""The client's commands of `glimpse` (explain, models, methods, jobs, visualize) as subprocesses
on the real stack."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from glimpse_client import Client
from PIL import Image

from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"


def glimpse(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `glimpse` command (`service.cli`, which hands these commands to the client)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIMPSE_URL", "GLIMPSE_API_KEY")}
    if url is not None:
        env["GLIMPSE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_images(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        paths.append(folder / f"lesion-{seed}.png")
        paths[-1].write_bytes(to_png_bytes(make_sample(seed).image))
    return paths


def decoded_scores(explanation: dict[str, object]) -> np.ndarray:
    scores = explanation["scores"]
    assert isinstance(scores, dict)
    flat = np.frombuffer(base64.b64decode(scores["base64"]), dtype="<f4")
    return flat.reshape(scores["shape"])


def test_ten_images_are_explained_concurrently_into_files(stack: DevStack, tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", range(50, 60))
    out = tmp_path / "out"
    ran = glimpse(
        "explain",
        *map(str, images),
        "--model",
        MODEL,
        "--method",
        "gradcam",
        "--method",
        "saliency",
        "--heatmap",
        "-j",
        "4",
        "-o",
        str(out),
        url=stack.url,
    )
    assert ran.returncode == 0, ran.stderr
    assert "explained 10/10" in ran.stderr and "failed" not in ran.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem for p in images)
    for image in images:
        folder = out / image.stem
        response = json.loads((folder / "response.json").read_text())
        assert [e["method"] for e in response["explanations"]] == ["gradcam", "saliency"]
        for explanation in response["explanations"]:
            stem = f"{explanation['method']}-{explanation['target']['class_index']}"
            scores = np.load(folder / f"{stem}.npy")
            assert scores.shape == (128, 128) and scores.dtype == np.float32
            np.testing.assert_array_equal(scores, decoded_scores(explanation))
            for kind in ("overlay", "heatmap"):
                with Image.open(folder / f"{stem}.{kind}.png") as png:
                    assert png.size == (128, 128)
        assert len(list(folder.iterdir())) == 1 + 2 * 3


def test_params_targets_and_output_options_reach_the_service(
    stack: DevStack, tmp_path: Path
) -> None:
    [image] = write_images(tmp_path, range(61, 62))
    ran = glimpse(
        "explain",
        str(image),
        "-m",
        MODEL,
        "--method",
        "smoothgrad",
        "--param",
        "smoothgrad.samples=4",
        "--param",
        "smoothgrad.noise=0.1",
        "--target",
        "0,2",
        "--size",
        "model",
        "--grid",
        "16",
        "--no-overlay",
        "--evaluate",
        "-o",
        str(tmp_path / "out"),
        url=stack.url,
    )
    assert ran.returncode == 0, ran.stderr
    folder = tmp_path / "out" / image.stem
    response = json.loads((folder / "response.json").read_text())
    for explanation in response["explanations"]:
        figures = explanation["evaluation"]
        assert set(figures) == {"deletion_auc", "insertion_auc", "top10_drop"}
        assert 0 <= figures["deletion_auc"] <= 1 and 0 <= figures["insertion_auc"] <= 1
    params = response["provenance"]["params"]["smoothgrad"]
    assert (params["samples"], params["noise"]) == (4, 0.1)
    assert sorted(p.name for p in folder.iterdir()) == [
        "response.json",
        "smoothgrad-0.npy",
        "smoothgrad-2.npy",
    ]
    assert np.load(folder / "smoothgrad-2.npy").shape == (16, 16)


def test_exit_codes_say_what_failed(stack: DevStack, tmp_path: Path) -> None:
    [good] = write_images(tmp_path, range(62, 63))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 8)

    refused = glimpse(
        "explain", str(good), "-m", "no-such-model", "-o", str(tmp_path / "a"), url=stack.url
    )
    assert refused.returncode == 3, refused.stderr
    assert "404" in refused.stderr and "no-such-model" in refused.stderr

    partly = glimpse(
        "explain", str(good), str(corrupt), "-m", MODEL, "-o", str(tmp_path / "b"), url=stack.url
    )
    assert partly.returncode == 5, partly.stderr
    assert "explained 2/2, 1 failed" in partly.stderr and "corrupt.png: 400" in partly.stderr
    assert (tmp_path / "b" / good.stem / "response.json").is_file()
    assert not (tmp_path / "b" / corrupt.stem).exists()

    nobody = f"http://127.0.0.1:{free_port()}"
    down = glimpse("models", "--url", nobody, "--retries", "0")
    assert down.returncode == 4 and "ConnectError" in down.stderr
    usage = glimpse("explain", "--model", MODEL)
    assert usage.returncode == 2


def test_models_and_methods_are_listed(stack: DevStack) -> None:
    models = glimpse("models", "--url", stack.url)
    assert models.returncode == 0, models.stderr
    row = next(line for line in models.stdout.splitlines() if line.startswith(MODEL + "\t"))
    assert "gradcam" in row and "worker" in row
    listed = json.loads(glimpse("models", "--json", url=stack.url).stdout)
    assert MODEL in {model["id"] for model in listed}
    methods = glimpse("methods", url=stack.url)
    assert methods.returncode == 0
    assert {line.split("\t")[0] for line in methods.stdout.splitlines()} >= {"gradcam", "lrp"}
    schemas = json.loads(glimpse("methods", "--json", url=stack.url).stdout)
    assert all("parameters" in method for method in schemas)


def test_jobs_are_read_and_cancelled(stack: DevStack, tmp_path: Path) -> None:
    [image] = write_images(tmp_path, range(63, 64))
    with Client(stack.url) as client:
        job_id = client.submit(image, MODEL, "saliency").job_id
        client.wait(job_id, timeout=60)
    got = glimpse("jobs", "get", job_id, url=stack.url)
    assert got.returncode == 0, got.stderr
    job = json.loads(got.stdout)
    assert job["status"] == "succeeded" and job["result"]["job_id"] == job_id
    cancelled = glimpse("jobs", "cancel", job_id, "--url", stack.url)
    # A finished job cannot be cancelled: the service's 409, a refusal (exit 3).
    assert (
        cancelled.returncode == 3 and "409" in cancelled.stderr and "succeeded" in cancelled.stderr
    )
    unknown = glimpse("jobs", "get", "0123456789abcdef", url=stack.url)
    assert unknown.returncode == 3 and "404" in unknown.stderr


def test_visualize_writes_the_synthesised_image(stack: DevStack, tmp_path: Path) -> None:
    target = tmp_path / "vis" / "nodule.png"
    ran = glimpse(
        "visualize", "-m", MODEL, "--target", "1", "--steps", "8", "--size", "32", "--seed", "1",
        "-o", str(target), url=stack.url,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"wrote {target}: class 1 (nodule), activation ")
    with Image.open(target) as png:
        assert png.size == (32, 32)
