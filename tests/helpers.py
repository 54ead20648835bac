"""Helpers shared by test modules: params.yaml's study values, the one place defaults live."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from facegan.params import deep_merge, read_yaml

REPO = Path(__file__).resolve().parents[1]
# R3GAN with one block per stage and 16 channels at most: a network the CPU tests train in seconds
TINY_R3GAN_ARCH = {
    "z_dim": 8,
    "channel_base": 64,
    "channel_max": 16,
    "group_channels": 8,
    "blocks_per_stage": 1,
    "bf16_stages": 2,
}


def study_params() -> dict:
    return read_yaml(REPO / "params.yaml")


def study_arch(model: str, **changes) -> dict:
    """models.<model>.arch of the study, with `changes` applied."""
    return deep_merge(study_params()["models"][model]["arch"], changes)


def study_model(model: str, **changes) -> dict:
    """models.<model> of the study, with `changes` deep-merged (nested dicts are merged, not replaced)."""
    return deep_merge(study_params()["models"][model], changes)


def model_settings(model: str, **changes):
    """models.<model> of the study as its typed settings class, with `changes` deep-merged first."""
    from facegan import settings

    return settings.model_settings_class(model).model_validate(study_model(model, **changes))


def loss_settings(model: str = "stylegan2", **changes):
    """The typed `loss` of a study model, with `changes`."""
    return model_settings(model, loss=changes).loss


def eval_settings(**changes):
    """The study's typed `evaluate` section, with `changes`."""
    from facegan import settings

    return settings.EvaluateSettings.model_validate(deep_merge(study_params()["evaluate"], changes))


def data_settings(**changes):
    """The study's typed `data` section, with `changes`."""
    from facegan import settings

    return settings.DataSettings.model_validate(deep_merge(study_params()["data"], changes))


def study_train(**changes) -> dict:
    return deep_merge(study_params()["train"], changes)


def cpu_train(**changes) -> dict:
    """The study's train params as the loop tests run them: CPU, deterministic, tiny grids, a history row
    every two steps of 8, no snapshots or samples unless `changes` ask for them."""
    return study_train(
        **{
            "device": "cpu",
            "checkpoint_kimg": 100.0,
            "snapshot_kimg": 100.0,
            "sample_kimg": 100.0,
            "grid_size": 2,
            "num_workers": 0,
            "deterministic": True,
            "log_kimg": 0.016,
            **changes,
        }
    )


# ------------------------------------------------------------------------------------------------
# Scratch copies of the project, run through DVC


def scratch_project(root: Path, profile: dict) -> Path:
    """A copy of the project's code and pipeline with `profile` as its demo profile, under DVC (no git)."""
    for folder in ("facegan", "models", "stages", "tune"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"], params["profiles"]["demo"] = "demo", profile
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(root, "init", "--no-scm", "-q")
    return root


def project_env(project: Path) -> dict:
    """The environment a command in a scratch project runs with: its code first, this venv's `python`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # stage commands run `python`
    return dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(project), PATH=path)


def dvc(project: Path, *args: str) -> str:
    """Run dvc and return its stdout. Its output goes through files, not pipes: `dvc exp run --run-all`
    starts queue workers that inherit its stdout and may linger after it exits (a celery worker once
    took minutes to shut down), and a pipe would make this call wait for them too."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(project), stdout=out, stderr=err
        ).returncode
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    return stdout


def git_project(root: Path, models: tuple[str, ...], profile: dict) -> Path:
    """A git + DVC copy of the project that studies `models` only (its dvc.yaml generated for them)."""
    scratch_project(root, profile)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"] = {m: params["models"][m] for m in models}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").unlink()
    shutil.rmtree(root / ".dvc")
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-m", "facegan.pipeline"], cwd=root, env=env, check=True, capture_output=True)
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    dvc(root, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "study"], cwd=root, check=True)
    return root


def set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


DCGAN_ARCH = {"z_dim": 8, "g_channels": 8, "d_channels": 8, "max_channels": 16}  # a tiny DCGAN

TINY_PROFILE = {
    "model": "pggan",
    "data": {"source": "synthetic", "num_faces": 32, "resolution": 32, "synthetic_images": 32},
    "train": {
        "device": "cpu",
        "checkpoint_kimg": 0.064,
        "snapshot_kimg": 100.0,
        "sample_kimg": 100.0,
        "grid_size": 2,
        "num_workers": 0,
        "log_kimg": 0.032,
        "deterministic": True,
    },
    "models": {
        "pggan": {
            "kimg": 0.096,
            "batch_size": 8,
            "arch": {"z_dim": 8, "fmap_base": 32, "fmap_max": 8},
            "progressive": {"stable_kimg": [0.016], "fade_kimg": [0.008], "batch_sizes": []},
        }
    },
}


QUEUE_PROFILE = {
    **{key: value for key, value in TINY_PROFILE.items() if key != "model"},  # `-S model=...` must win
    "evaluate": {
        "extractor": "proxy",
        "lpips": "proxy",
        "num_gen": 16,
        "num_ref": 16,
        "snapshot_num_gen": 16,
        "ppl_samples": 8,
        "batch_size": 8,
        "grid_size": 2,
        "interpolation_steps": 3,
        "fid_inf_points": 3,
        "fid_inf_smallest": 0.5,
        "dinov2": "none",  # the study's official ViT-L/14 needs Meta's file; the stages' test runs the stand-in
    },
    "models": {
        "dcgan": {"kimg": 0.064, "batch_size": 8, "arch": DCGAN_ARCH},
        "pggan": TINY_PROFILE["models"]["pggan"],
    },
}


def offset_biases(module, seed: int, scale: float = 0.01) -> None:
    """Move every bias of `module` off 0 by N(0, scale^2) noise from its own seeded generator (parameters in
    registration order). A golden run starts from such weights where zero biases would put pre-activations
    exactly on a leaky ReLU's kink (bCR's cutout zeros), whose side the two codes' float rounding decides."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
