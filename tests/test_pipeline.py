"""dvc.yaml follows the code: generated from the stage scripts' imports, checked against what they load, and
`dvc status` marks exactly the stages whose code changed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facegan import pipeline
from facegan.params import model_names

REPO = Path(__file__).resolve().parents[1]
MODELS = model_names()


def test_dvc_yaml_is_generated_from_the_code():
    for name, text in pipeline.generate().files.items():
        assert (REPO / name).read_text() == text, f"{name} is out of date: run `python -m facegan.pipeline`"


def declared_code(stage: str, model: str | None = None) -> set[str]:
    """The project files dvc.yaml says `stage` (for `model`: stage `<stage>-<model>`) depends on."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][f"{stage}-{model}" if model else stage]
    return {d for d in spec["deps"] if d.endswith((".py", ".yaml"))}


RUNTIME_PROBE = r"""
import json, os, sys
import numpy, torch, torchvision, PIL, yaml, scipy  # third-party modules load before the forks
root = sys.argv[1]
jobs = json.loads(sys.argv[2])
result = {}
for stage, model in jobs:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        import importlib
        importlib.import_module(f"stages.{stage}")
        if model:
            import models
            models.get_spec(model)
        files = sorted(os.path.relpath(m.__file__, root) for name, m in list(sys.modules.items())
                       if name.split(".")[0] in ("facegan", "models", "stages") and getattr(m, "__file__", None))
        os.write(write, json.dumps(files).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    result[f"{stage}@{model}"] = json.loads(data)
print(json.dumps(result))
"""


def test_every_module_a_stage_loads_at_run_time_is_among_its_dependencies():
    """Independent of the generator's static walk: import each stage (and model) and list what Python loaded."""
    jobs = [(s, None) for s in ("configure", "download", "preprocess", "reference_stats", "report")]
    jobs += [(s, m) for s in ("train", "evaluate") for m in MODELS]
    out = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE, str(REPO), json.dumps(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for stage, model in jobs:
        missing = set(loaded[f"{stage}@{model}"]) - declared_code(stage, model)
        assert not missing, f"{stage}@{model} loads {sorted(missing)} but dvc.yaml does not list them"


def test_every_stage_lists_each_dependency_once_and_each_model_has_its_own_stages():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        assert len(stage["deps"]) == len(set(stage["deps"])), f"{name} lists a dependency twice"
        assert not any("${" in d for d in stage["deps"]), f"{name} pads or templates its dependencies"
    for model in MODELS:
        assert spec[f"train-{model}"]["cmd"] == f"python -m stages.train {model}"
        assert spec[f"evaluate-{model}"]["outs"] == [f"evals/{model}"]


def test_each_model_depends_on_its_own_code_only():
    assert "models/dcgan.py" in declared_code("train", "dcgan")
    assert not {"models/layers.py", "models/stylegan3.py"} & declared_code("train", "dcgan")
    # the shared loop's ADA resamples with the FIR ops, so every model's training depends on them; DCGAN's
    # evaluation does not
    assert "facegan/ops/upfirdn2d.py" in declared_code("train", "dcgan")
    assert "facegan/ops/upfirdn2d.py" not in declared_code("evaluate", "dcgan")
    for stage in ("train", "evaluate"):
        # every style model builds on the shared layers and kernels, and on no other model's module
        for model in ("stylegan", "stylegan2", "stylegan3", "styleswin"):
            own = {path for path in declared_code(stage, model) if path.startswith("models/")}
            assert own == {"models/__init__.py", "models/layers.py", f"models/{model}.py"}, (stage, model, own)
        assert {"facegan/ops/filtered_lrelu.py", "facegan/ops/_triton_kernels.py"} <= declared_code(stage, "stylegan")
    assert {"models/styleswin.py", "facegan/data/cache.py", "facegan/metrics/features.py"} <= declared_code(
        "evaluate", "styleswin"
    )
    assert not {"facegan/training/loop.py", "facegan/training/phases.py"} & declared_code("evaluate", "stylegan2")
    assert not any(d.startswith(("models/", "facegan/ops/")) for d in declared_code("report"))


def dvc(project: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def locked_project(tmp_path_factory):
    """A copy of the project's code and pipeline with every stage's outputs present and recorded in dvc.lock."""
    root = tmp_path_factory.mktemp("dvcproject")
    for folder in ("facegan", "models", "stages", "tune"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    dvc(root, "init", "--no-scm", "-q")
    dvc(root, "config", "core.analytics", "false")
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        declared = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
        for out in [entry if isinstance(entry, str) else next(iter(entry)) for entry in declared]:
            path = root / out
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{name}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text(f"{name}\n")
    dvc(root, "commit", "-f", "-q")
    assert json.loads(dvc(root, "status", "--json")) == {}
    return root


def stale_after_touching(project: Path, relative: str) -> set[str]:
    path = project / relative
    original = path.read_text()
    path.write_text(original + "\n# touched\n")
    try:
        return set(json.loads(dvc(project, "status", "--json")))
    finally:
        path.write_text(original)


def test_dvc_status_marks_exactly_the_stages_whose_code_changed(locked_project):
    style_models = set(MODELS) - {"dcgan"}
    stale = stale_after_touching(locked_project, "models/layers.py")
    assert stale == {f"train-{m}" for m in style_models} | {f"evaluate-{m}" for m in style_models}
    stale = stale_after_touching(locked_project, "facegan/ops/filtered_lrelu.py")  # ADA loads the ops in every train
    assert stale == {f"train-{m}" for m in MODELS} | {f"evaluate-{m}" for m in style_models}
    assert stale_after_touching(locked_project, "facegan/training/loop.py") == {f"train-{m}" for m in MODELS}
    assert stale_after_touching(locked_project, "facegan/training/phases.py") == {f"train-{m}" for m in MODELS}
    assert stale_after_touching(locked_project, "facegan/report/render.py") == {"report"}
    # one model's module re-runs that model alone: no model imports another's
    assert stale_after_touching(locked_project, "models/stylegan2.py") == {"train-stylegan2", "evaluate-stylegan2"}
