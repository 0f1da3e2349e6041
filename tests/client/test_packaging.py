"""`client/` builds as its own wheel, `glimpse-client`, with only its four dependencies."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_builds_a_wheel_of_its_own(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path), str(ROOT / "client")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("glimpse_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
        entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt"))
    packages = {name.split("/")[0] for name in names if not name.endswith(".dist-info/")}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"glimpse_client"}
    assert "glimpse_client/py.typed" in names
    requires = {
        re.split(r"[\s<>=!~\[;]", line.removeprefix("Requires-Dist: "))[0].lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    }
    assert requires == {"httpx", "pydantic", "numpy", "pillow"}
    assert "glimpse-client = glimpse_client.cli:main" in entry_points.decode()


def test_the_gateway_image_and_make_install_carry_the_client() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    gateway = dockerfile[dockerfile.index("AS gateway") : dockerfile.index("AS worker")]
    assert "COPY client/ client/" in gateway
    assert "pip install --no-cache-dir ./client" in gateway
    assert "!client/" in (ROOT / ".dockerignore").read_text().splitlines()
    install = next(
        line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line
    )
    assert "-e ./client" in install
