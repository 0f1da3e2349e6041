"""Peak worker memory of one job per input megapixel: decoding, and the whole job with its overlay.

Each case runs in a fresh process whose peak resident set (VmHWM) is reset after the imports, the
model and the file's bytes are in memory, so the figure is what the job itself adds. The images
are the small files that claim many pixels: PNGs of zeros (8000 × 8000 is 62 KB) and a JPEG.

    python bench/decode_memory.py
"""

import io
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("PNG grey", 8000, 8000),
    ("PNG grey", 4000, 4000),
    ("PNG RGB", 4000, 4000),
    ("JPEG RGB", 4000, 3000),
]


def image_bytes(kind: str, width: int, height: int) -> bytes:
    mode = "L" if "grey" in kind else "RGB"
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, format="JPEG" if "JPEG" in kind else "PNG")
    return out.getvalue()


def _peak_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure(kind: str, width: int, height: int, stage: str) -> None:
    """In this process: the peak memory `stage` (decode, or the whole job) adds, printed."""
    import torch

    from schemas.jobs import ExplanationJob
    from workers.images import decode_image
    from workers.pipeline import PreparedJob, explain_jobs
    from workers.repository import load_model

    torch.set_num_threads(1)
    model = load_model(ROOT / "models" / "demo-lesions" / "1", torch.device("cpu"))
    data = image_bytes(kind, width, height)
    job = ExplanationJob.model_validate(
        {
            "job_id": "bench",
            "model": model.manifest.id,
            "methods": ["gradcam"],
            "target": "top1",
            "params": {},
            "output": {"scores": "none"},
            "enqueued_at": time.time(),
        }
    )
    spec = model.manifest.input
    # Warm: the first pass allocates what every later job reuses.
    warm = decode_image(image_bytes(kind, 256, 256), reduce_to=(spec.height, spec.width))
    explain_jobs(model, [PreparedJob(job, warm, time.time())], 8)
    before = int(Path("/proc/self/statm").read_text().split()[1]) * 4
    _reset_peak()
    image = decode_image(data, reduce_to=(spec.height, spec.width))
    if stage == "job":
        explain_jobs(model, [PreparedJob(job, image, time.time())], 8)
    added_mib = (_peak_kib() - before) / 1024
    megapixels = width * height / 1e6
    print(
        f"| {kind} {width}×{height} | {len(data) / 1024:,.0f} KB | {stage} "
        f"| {added_mib:,.0f} MiB | {added_mib / megapixels:,.1f} MiB |"
    )


def main() -> None:
    print("| image | file | stage | peak added | per megapixel |")
    print("|---|---|---|---|---|")
    for kind, width, height in CASES:
        for stage in ("decode", "job"):
            subprocess.run(
                [sys.executable, __file__, kind, str(width), str(height), stage],
                check=True,
                cwd=ROOT,
            )


if __name__ == "__main__":
    if len(sys.argv) == 5:
        measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()
