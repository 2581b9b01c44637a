"""Installing lfr-ds never replaces a torch that is already in its range: pip's real resolver, with deps.

Stand-in distributions replace the real wheels (it is pip's decision that is tested, not the packages):
lfr-ds with pyproject.toml's own requirements, each dependency at the lowest version it admits, and
torch at several versions, 2.13.0+cpu the newest that pip could pick. A scratch environment holds the
"user's" torch. Everything runs offline, with the machine's pip configuration switched off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from gpu_kit import BOX, stand_in_wheel

ROOT = Path(__file__).resolve().parents[1]
NEWER_TORCH = "2.13.0+cpu"
PIP_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-index"], check=True, env=PIP_ENV)


def lowest_admitted(requirement: str) -> str:
    m = re.search(r"(?:>=|~=|==)\s*([0-9][0-9A-Za-z.+]*)", requirement)
    return m.group(1) if m else "1.0"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stand_in_wheel(folder, "lfr-ds", project["version"], project["dependencies"])
    for req in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        if name != "torch":
            stand_in_wheel(folder, name, lowest_admitted(req))
    for version in ("2.5.0", "2.11.0", "2.11.0+cu130", "2.12.0a0+abc123", NEWER_TORCH):
        stand_in_wheel(folder, "torch", version)
    return folder


def scratch_env(path: Path, wheels: Path, torch_version: str, *, with_pip: bool = False) -> str:
    """A venv holding torch ``torch_version`` (and, with pip, the other packages of a GPU image)."""
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], check=True)
    python = str(path / "bin" / "python")
    image = [name for name in BOX if name != "torch"] if with_pip else []
    _pip("--python", python, "install", "--find-links", str(wheels), f"torch=={torch_version}", *image)
    return python


def planned_installs(wheels: Path, env: Path, torch_version: str) -> dict[str, str]:
    """What installing lfr-ds into an environment with torch ``torch_version`` would install."""
    python = scratch_env(env, wheels, torch_version)
    report = env / "report.json"
    _pip("--python", python, "install", "--dry-run", "--report", str(report), "--find-links", str(wheels), "lfr-ds")
    plan = json.loads(report.read_text())["install"]
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in plan}


@pytest.mark.parametrize("torch_version", ["2.11.0", "2.12.0a0+abc123"], ids=["release", "nvidia-prerelease"])
def test_install_keeps_an_in_range_torch(wheels, tmp_path, torch_version):
    plan = planned_installs(wheels, tmp_path / "env", torch_version)
    assert "lfr-ds" in plan and "deepspeed" in plan
    assert "torch" not in plan, f"pip would replace torch {torch_version} with {plan.get('torch')}"


def test_install_replaces_a_torch_below_the_range(wheels, tmp_path):
    """The control: the same plan does show a replacement when the installed torch is out of range."""
    plan = planned_installs(wheels, tmp_path / "env", "2.5.0")
    assert plan["torch"] == NEWER_TORCH


def _kit_install(wheels: Path, tmp_path: Path, torch_version: str) -> tuple[subprocess.CompletedProcess, str]:
    """`gpu_kit.py install` from a kit folder of stand-ins into a scratch "GPU image" with pip."""
    kit = tmp_path / "kit"
    shutil.copytree(wheels, kit / "wheels")
    (kit / "bench").mkdir()
    shutil.copy2(ROOT / "bench" / "gpu_kit.py", kit / "bench")
    python = scratch_env(tmp_path / "box", wheels, torch_version, with_pip=True)
    proc = subprocess.run(
        [python, str(kit / "bench" / "gpu_kit.py"), "install"], capture_output=True, text=True, env=PIP_ENV
    )
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    return proc, {p["name"]: p["version"] for p in json.loads(listed.stdout)}


def test_kit_installs_offline_and_leaves_the_image_torch(wheels, tmp_path):
    proc, installed = _kit_install(wheels, tmp_path, "2.11.0+cu130")
    assert proc.returncode == 0, proc.stderr
    assert installed["torch"] == "2.11.0+cu130" and "lfr-ds" in installed and "deepspeed" in installed
    assert "torch 2.11.0+cu130 untouched" in proc.stderr


def test_kit_refuses_to_replace_the_image_torch(wheels, tmp_path):
    proc, installed = _kit_install(wheels, tmp_path, "2.5.0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: installing the kit would install or replace torch {NEWER_TORCH} in {tmp_path}/box/bin/python; "
        "nothing was installed"
    )
    assert installed["torch"] == "2.5.0" and "lfr-ds" not in installed


def test_kit_install_needs_the_image_packages(wheels, tmp_path):
    """A Python with torch but without the image's other big packages: one line, before pip is asked."""
    python = scratch_env(tmp_path / "bare", wheels, "2.11.0+cu130")
    proc = subprocess.run(
        [python, str(ROOT / "bench" / "gpu_kit.py"), "install"], capture_output=True, text=True, env=PIP_ENV
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: this Python ({python}) lacks numpy, scipy, matplotlib, sentencepiece, ")
    assert len(proc.stderr.splitlines()) == 1
