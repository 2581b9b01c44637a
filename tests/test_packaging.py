"""Installing lfr-ds never replaces a torch that is already in its range (pip's real resolver, with deps).

Stand-in distributions replace the real wheels (it is the resolver's decision that is tested, not the
packages): lfr-ds with pyproject.toml's own requirements, each of its dependencies at the version this
venv has, and torch at 2.13.0+cpu as the newer build pip could pick. A scratch environment holds the
"user's" torch; ``pip install --dry-run --report`` says what pip would install into it, offline and with
the machine's pip configuration switched off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEWER_TORCH = "2.13.0+cpu"


def stand_in_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """An installable wheel holding nothing but metadata."""
    dist = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    )
    files = {
        f"{dist}.dist-info/METADATA": meta,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(f, text)
    return path


def _pip(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no machine-wide constraints, find-links or index
    subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-index"], check=True, env=env)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stand_in_wheel(folder, "lfr-ds", project["version"], project["dependencies"])
    for req in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        if name != "torch":
            stand_in_wheel(folder, name, metadata.version(name))
    for version in ("2.5.0", "2.11.0", "2.12.0a0+abc123", NEWER_TORCH):
        stand_in_wheel(folder, "torch", version)
    return folder


def planned_installs(wheels: Path, env: Path, torch_version: str) -> dict[str, str]:
    """Make ``env`` with torch ``torch_version``; return what installing lfr-ds there would install."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = str(env / "bin" / "python")
    _pip("--python", python, "install", "--find-links", str(wheels), f"torch=={torch_version}")
    report = env / "report.json"
    _pip("--python", python, "install", "--dry-run", "--report", str(report), "--find-links", str(wheels), "lfr-ds")
    plan = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in plan}


@pytest.mark.parametrize("torch_version", ["2.11.0", "2.12.0a0+abc123"], ids=["release", "nvidia-prerelease"])
def test_install_keeps_an_in_range_torch(wheels, tmp_path, torch_version):
    plan = planned_installs(wheels, tmp_path / "env", torch_version)
    assert "lfr-ds" in plan and "deepspeed" in plan
    assert "torch" not in plan, f"pip would replace torch {torch_version} with {plan.get('torch')}"


def test_install_replaces_a_torch_below_the_range(wheels, tmp_path):
    """The control: the same plan does show a replacement when the installed torch is out of range."""
    plan = planned_installs(wheels, tmp_path / "env", "2.5.0")
    assert plan["torch"] == NEWER_TORCH
