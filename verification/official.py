"""Where the official repositories live and how to import their code without touching the project's.

The verification scripts compare our models with the code the papers published (NVlabs' stylegan3
and stylegan2-ada-pytorch, microsoft/StyleSwin, pytorch/examples). Those repositories are fetched
into `.scratch/official/<owner>+<name>/` (ignored by git, never copied into the project; README.md
of this folder says how), or wherever FACEGAN_OFFICIAL_DIR points.

NVlabs' repositories have top-level packages `training`, `torch_utils`, `dnnlib` and `metrics`.
`import_nvlabs` puts a repository's root on sys.path only while it imports the modules asked for,
and refuses when one of those package names is already loaded from somewhere else (the project's
own packages are all under facegan/ and models/, so nothing of ours can be shadowed, and two
NVlabs repositories cannot be mixed in one process).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

from facegan.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_ROOT = Path(os.environ.get("FACEGAN_OFFICIAL_DIR") or REPO_ROOT / ".scratch" / "official")

# The commits the verification was done at (README.md); a repository at another commit still
# imports, and the scripts print the commit they compared with.
PINNED_COMMITS = {
    "NVlabs+stylegan3": "c233a919a6faee6e36a316ddd4eddababad1adf9",
    "NVlabs+stylegan2-ada-pytorch": "d72cc7d041b42ec8e806021a205ed9349f87c6a4",
    "microsoft+StyleSwin": "a7c28b3121ca86f0577696d6f1d699e13d368672",
    "pytorch+examples": "77f55b912142e11fcfdf5b530231fb9c52f181e8",
    "NVlabs+stylegan": "1e0d5c781384ef12b50ef20a62fee5d78b38e88f",
    "tkarras+progressive_growing_of_gans": "2504c3f3cb98ca58751610ad61fa1097313152bd",
    "brownvc+R3GAN": "19a7ddf463fbac2bd39b4c1c73d63f1c441c7403",
}

# NVlabs' top-level packages; imported under these names, as the official code imports itself.
NVLABS_PACKAGES = ("training", "torch_utils", "dnnlib", "metrics")


def official_repo(name: str) -> Path:
    """OFFICIAL_ROOT / name, e.g. official_repo('NVlabs+stylegan3'); a one-line UserError naming
    the fetch command when it is missing."""
    path = OFFICIAL_ROOT / name
    if not path.is_dir():
        owner, _, repo = name.partition("+")
        commit = PINNED_COMMITS.get(name, "<commit>")
        raise UserError(
            f"official code {name} not found at {path}: git clone https://github.com/{owner}/{repo} {path} "
            f"&& git -C {path} checkout {commit} (or set FACEGAN_OFFICIAL_DIR; verification/README.md)"
        )
    return path


def commit_of(name: str) -> str:
    """The commit of an official repository: its `.commit` file (a snapshot without .git), else
    `git rev-parse HEAD` of the clone."""
    path = official_repo(name)
    marker = path / ".commit"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise UserError(f"{path} has neither a .commit file nor a git checkout: write the commit into .commit") from err
    return out.stdout.strip()


def _pkg_resources_shim() -> types.ModuleType:
    """NVlabs' torch_utils imports `parse_version` from pkg_resources, which recent setuptools drop."""
    from packaging.version import parse

    shim = types.ModuleType("pkg_resources")
    shim.parse_version = parse
    return shim


def _loaded_from(package: str) -> Path | None:
    module = sys.modules.get(package)
    if module is None:
        return None
    locations = list(getattr(module, "__path__", [])) or [getattr(module, "__file__", None) or ""]
    return Path(locations[0]).resolve().parent


def import_nvlabs(name: str, *modules: str) -> tuple[types.ModuleType, ...]:
    """Import `modules` (e.g. 'training.networks_stylegan2', 'training.loss') of the NVlabs
    repository `name` and return them in that order. The repository root is on sys.path only
    during the import; pkg_resources is faked for it when it is not installed."""
    root = official_repo(name).resolve()
    for package in NVLABS_PACKAGES:
        loaded = _loaded_from(package)
        if loaded is not None and loaded != root:
            raise UserError(
                f"import_nvlabs({name!r}): a module named {package!r} is already loaded from {loaded}; "
                "compare with one NVlabs repository per process"
            )
    shimmed = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
    if shimmed:
        sys.modules["pkg_resources"] = _pkg_resources_shim()
    sys.path.insert(0, str(root))
    try:
        imported = tuple(importlib.import_module(module) for module in modules)
    finally:
        sys.path.remove(str(root))
        if shimmed:
            del sys.modules["pkg_resources"]
    for module in imported:
        where = Path(module.__file__).resolve()
        if root not in where.parents:  # a project module of the same name won: never compare with it
            raise UserError(f"import_nvlabs({name!r}): {module.__name__} came from {where}, not from {root}")
    return imported
