#!/usr/bin/env python3
"""The offline GPU kit: what a bare GPU box lacks, in one folder, and its offline install there.

    launch_scripts/gpu_kit.sh prepare [--out gpu_kit]      # here, with the package index: build the folder
    gpu_kit/launch_scripts/gpu_kit.sh install                # on the box: offline, into its own Python
    gpu_kit/launch_scripts/gpu_kit.sh run                    # on the box: install, then the GPU check

The box is a PyTorch GPU image: its Python already has torch and the big binary packages (``BOX``), but
no DeepSpeed, no megatron-core and no internet. The kit holds lfr-ds, DeepSpeed built without ops (pure
Python: its ops JIT-compile on the box), megatron-core and every small package those need that the BOX
packages do not already bring, as wheels for the box's Python, plus the scripts that run the check.
``install`` refuses, before touching anything, a plan that would install or replace a BOX package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
# What a PyTorch GPU image ships (the big binary packages): the kit never carries nor replaces them.
# pyarrow (the Parquet reader) is one: its wheel alone is ~45 MB, two thirds of a kit that carried it.
BOX = ("torch", "numpy", "scipy", "matplotlib", "sentencepiece", "tensorboard", "safetensors", "pyarrow")
SCRIPTS = ["bench/gpu_kit.py", "bench/gpu_check.py", "bench/runs.py", "launch_scripts/gpu_kit.sh"]


def stand_in_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """An installable wheel that holds only metadata: enough for pip's resolver to decide with."""
    dist = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"
    path = Path(folder) / f"{dist}-py3-none-any.whl"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def _pins() -> dict[str, str]:
    """deepspeed and megatron-core at the versions the CPU suite runs (constraints-cpu.txt)."""
    lines = (ROOT / "constraints-cpu.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {name: pins[name] for name in ("deepspeed", "megatron-core")}


def _needed(plan: list[dict], python_version: str) -> dict[str, str]:
    """The packages reachable from lfr-ds without passing through a BOX package: name -> version."""
    # Imported here: only prepare needs packaging, and the box's Python runs this file before it has it.
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    target = {
        **default_environment(),
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "extra": "",
    }
    nodes = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in plan}
    needed, todo = {}, ["lfr-ds"]
    while todo:
        name = todo.pop()
        if name in needed or name in BOX:
            continue
        needed[name] = nodes[name]["version"]
        for r in map(Requirement, nodes[name].get("requires_dist", [])):
            if r.marker is None or r.marker.evaluate(target):
                todo.append(canonicalize_name(r.name))
    return needed


def _older_platforms(tag: str) -> list[str]:
    """``manylinux_2_28_x86_64`` and every older glibc's tags (pip does not expand them when told a platform)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if m is None:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
    return tags + [f"{legacy[v]}_{arch}" for v in legacy if v <= glibc]


def prepare(out: Path, python_version: str, platform: str, box_torch: str) -> None:
    """Build ``out/wheels`` (what the box lacks, for its Python and platform), copy the scripts, write kit.json."""
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    pins = _pins()
    _pip("wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT))
    # No ops compiled: a pure-Python wheel for any x86-64 Linux Python; the box JIT-compiles what it uses.
    _pip(
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        str(wheels),
        f"deepspeed=={pins['deepspeed']}",
        env={**os.environ, "DS_BUILD_OPS": "0"},
    )
    target = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    target += [arg for tag in _older_platforms(platform) for arg in ("--platform", tag)]
    with tempfile.TemporaryDirectory() as tmp:
        # The box's torch, as a stand-in: the resolver plans around it and never looks at a real (CUDA) torch.
        stand_in_wheel(Path(tmp), "torch", box_torch)
        _pip(
            "install",
            "-q",
            "--dry-run",
            "--ignore-installed",
            "--report",
            f"{tmp}/plan.json",
            "--target",
            f"{tmp}/t",
            "--find-links",
            str(wheels),
            "--find-links",
            tmp,
            *target,
            "lfr-ds",
            f"deepspeed=={pins['deepspeed']}",
            f"megatron-core=={pins['megatron-core']}",
            f"torch=={box_torch}",
        )
        plan = json.loads(Path(f"{tmp}/plan.json").read_text())["install"]
    needed = _needed(plan, python_version)
    fetch = [f"{name}=={version}" for name, version in sorted(needed.items()) if name not in ("lfr-ds", "deepspeed")]
    _pip("download", "-q", "--no-deps", "-d", str(wheels), *target, *fetch)
    for script in SCRIPTS:
        (out / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / script, out / script)
    (out / "kit.json").write_text(
        json.dumps(
            {
                "python": python_version,
                "platform": platform,
                "packages": needed,
                "box": sorted(BOX),
                "planned_against_torch": box_torch,
            },
            indent=1,
        )
        + "\n"
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"kit: {out} ({size / 2**20:.1f} MiB, {len(needed)} packages for Python {python_version}: "
        f"{', '.join(f'{n} {v}' for n, v in sorted(needed.items()))})"
    )


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def install(kit: Path) -> None:
    """Into this Python, from the kit alone: refuses if a BOX package is missing or would be installed."""
    missing = [name for name in BOX if not _installed(name)]
    if missing:
        _fail(
            f"this Python ({sys.executable}) lacks {', '.join(missing)}; the kit expects a PyTorch GPU image "
            "that has them: run with PYTHON=<that image's python>, or install them first"
        )
    wheels = kit / "wheels"
    if not any(wheels.glob("lfr_ds-*.whl")):
        _fail(f"{wheels} holds no lfr-ds wheel; build the kit with launch_scripts/gpu_kit.sh prepare first")
    offline = ["--no-index", "--find-links", str(wheels), "--only-binary=:all:", "lfr-ds"]
    torch_before = metadata.version("torch")
    with tempfile.TemporaryDirectory() as tmp:
        _pip("install", "-q", "--dry-run", "--report", f"{tmp}/plan.json", *offline)
        plan = json.loads(Path(f"{tmp}/plan.json").read_text())["install"]
    planned = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in plan}
    touched = [f"{name} {version}" for name, version in planned.items() if name in BOX]
    if touched:
        _fail(
            f"installing the kit would install or replace {', '.join(touched)} in {sys.executable}; "
            "nothing was installed"
        )
    _pip("install", "-q", *offline)
    # The kit's own lfr-ds build, even over an installed one of the same version (a re-run with a new kit).
    _pip("install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(next(wheels.glob("lfr_ds-*.whl"))))
    torch_after = metadata.version("torch")
    if torch_after != torch_before:  # the dry run said otherwise: a pip bug worth a traceback-free stop
        _fail(f"torch changed from {torch_before} to {torch_after} during the install")
    listed = ", ".join(f"{name} {version}" for name, version in planned.items()) or "nothing new"
    print(f"installed from {wheels} into {sys.executable}: {listed}; torch {torch_after} untouched", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    prep = sub.add_parser("prepare", help="build the kit folder (needs the package index)")
    prep.add_argument("--out", type=Path, default=ROOT / "gpu_kit", help="kit folder (default: gpu_kit/)")
    prep.add_argument("--python-version", default="3.12", help="the box's Python (default 3.12)")
    prep.add_argument("--platform", default="manylinux_2_28_x86_64", help="the box's wheel platform tag")
    prep.add_argument("--box-torch", default="2.11.0+cu130", help="the box's torch version, planned around")
    inst = sub.add_parser("install", help="install the kit offline into this Python, leaving its torch alone")
    inst.add_argument("--kit", type=Path, default=ROOT, help="kit folder (default: the one this script is in)")
    args = p.parse_args()
    if args.mode == "prepare":
        prepare(args.out, args.python_version, args.platform, args.box_torch)
    else:
        install(args.kit)


if __name__ == "__main__":
    main()
