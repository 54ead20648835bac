"""Wheels for a GPU machine with no package index (benchmarks/prepare_gpu_carry.sh calls this).

    python benchmarks/carry_wheels.py DEST

The versions are this venv's: dvc's and dvclive's dependency closure as installed here, plus the packages
our stages import that the GPU image lacks (pydantic, timm). Packages that image already holds (the device library's
KINDS.md list, as of 2026-11-17) are left out, so that one version of each is installed there. Each wheel is
downloaded for CPython 3.12 on manylinux x86-64; a project that publishes only an sdist is built into a
(pure-Python) wheel here.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ("dvc", "dvclive", "pydantic", "timm")  # pydantic: facegan.settings; timm: FD-DINOv2's ViT
NO_DEPS = ("facenet-pytorch", "clean-fid", "lpips")  # their own requirements pin or pull torch
ON_IMAGE = set(  # the GPU image's Python packages (device library, KINDS.md)
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cycler cython filelock
    flatbuffers fonttools frozenlist fsspec grpcio h11 h5py httpcore httpx huggingface-hub idna imageio
    iniconfig jinja2 joblib kiwisolver lxml markdown markdown-it-py markupsafe matplotlib mdurl mpmath msgpack
    multidict mypy-extensions networkx ninja numpy nvidia-ml-py opencv-python-headless packaging pandas
    pathspec pillow pip pluggy portalocker propcache protobuf psutil pyarrow pygments pyparsing python-dateutil
    pyyaml regex requests rich safetensors scikit-image scikit-learn scipy setuptools shellingham six
    sortedcontainers sympy tabulate threadpoolctl torch torchvision tqdm triton typer typing-extensions
    typing-inspect urllib3 wheel wrapt yarl zipp""".split()  # noqa: SIM905
)
PLATFORM = (
    ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
    + [
        arg
        for tag in ("manylinux_2_17", "manylinux_2_28", "manylinux_2_34", "manylinux2014")
        for arg in ("--platform", f"{tag}_x86_64")
    ]
    + ["--platform", "any"]
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """name -> installed version of the roots and everything they require (no extras), as installed here."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        dist = metadata.distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def main() -> None:
    dest = Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    wanted = closure(ROOTS) | {canonical(n): metadata.version(n) for n in NO_DEPS}
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    for name, version in sorted(wanted.items()):
        if name in ON_IMAGE:
            continue
        spec = f"{name}=={version}"
        got = subprocess.run([*pip, "download", "--no-deps", *PLATFORM, "-d", str(dest), spec], capture_output=True)
        if got.returncode != 0:  # sdist only: build the (pure-Python) wheel here
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), spec], check=True, capture_output=True)
        print(spec, flush=True)


if __name__ == "__main__":
    main()
