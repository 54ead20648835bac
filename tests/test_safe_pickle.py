"""Pickles a user brings are read through an allow-list: weights come back, code in the file never runs."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from facegan import safe_pickle
from facegan.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# what a persistent class's embedded source would do if anything executed it
SOURCE = "import pathlib\npathlib.Path('source_ran.txt').write_text('ran')\nclass MappingNetwork: pass\n"


class Command:
    """What a hostile pickle holds: unpickling it runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def nvlabs_style_pickle(path: Path) -> dict:
    """A pickle shaped like NVlabs' network pickles: {'G_ema': persistent record, 'kwargs': EasyDict}, written
    through stand-in `torch_utils.persistence` and `dnnlib.util` modules that exist only while dumping."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called when reading: the reader maps it to a record
        raise AssertionError

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = persistence.__name__, util.__name__
    EasyDict.__qualname__, _reconstruct_persistent_obj.__qualname__ = "EasyDict", "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    linear = torch.nn.Linear(3, 2)
    state = {
        "_parameters": collections.OrderedDict(linear.named_parameters()),
        "_buffers": collections.OrderedDict(w_avg=torch.arange(4.0)),
        "init_kwargs": EasyDict(z_dim=8, w_dim=8),
        "freqs": np.linspace(0, 1, 5, dtype=np.float32),
    }
    meta = {"type": "class", "version": 6, "module_src": SOURCE, "class_name": "MappingNetwork", "state": state}

    class Persistent:
        def __reduce__(self):
            return (_reconstruct_persistent_obj, (meta,))

    saved = dict(sys.modules)
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence})
    sys.modules.update({"dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    try:
        path.write_bytes(pickle.dumps({"G_ema": Persistent(), "kwargs": EasyDict(resolution=64)}, protocol=4))
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    return state


def test_an_nvlabs_network_pickle_is_read_as_data_and_its_embedded_source_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = nvlabs_style_pickle(tmp_path / "network.pkl")
    loaded = safe_pickle.load(tmp_path / "network.pkl")
    record = loaded["G_ema"]
    assert isinstance(record, safe_pickle.PersistentRecord) and record.class_name == "MappingNetwork"
    assert record.version == 6 and record.module_src == SOURCE
    assert not (tmp_path / "source_ran.txt").exists()
    for name, tensor in state["_parameters"].items():
        assert (
            torch.equal(record.state["_parameters"][name], tensor) and record.state["_parameters"][name].requires_grad
        )
    assert torch.equal(record.state["_buffers"]["w_avg"], torch.arange(4.0))
    assert record.state["init_kwargs"] == {"z_dim": 8, "w_dim": 8} and type(record.state["init_kwargs"]) is dict
    assert np.array_equal(record.state["freqs"], state["freqs"]) and loaded["kwargs"] == {"resolution": 64}


def test_a_pickle_whose_reduce_runs_a_command_stops_with_one_line_and_runs_nothing(tmp_path):
    bad = tmp_path / "stylegan2-ffhq.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Command(f"touch {tmp_path / 'pwned'}")}))
    with pytest.raises(safe_pickle.RefusedPickle) as err:
        safe_pickle.load(bad)
    line = str(err.value)
    assert "\n" not in line and str(bad) in line and "posix.system" in line and "no code from the file ran" in line
    assert not (tmp_path / "pwned").exists()
    # through a stage's error boundary: exit status 2, the same one line
    script = (
        "from facegan import safe_pickle\nfrom facegan.errors import stage_main\n"
        f"stage_main(lambda: safe_pickle.load({str(bad)!r}))()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {line}"
    assert not (tmp_path / "pwned").exists()


def test_tensor_bytes_hiding_a_second_pickle_are_read_weights_only(tmp_path):
    """torch.storage._load_from_bytes would torch.load its bytes with weights_only=False: a command inside them
    would run. Read weights-only, it is refused."""
    import io

    inner = io.BytesIO()
    torch.save({"x": Command(f"touch {tmp_path / 'pwned'}")}, inner)

    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (inner.getvalue(),))

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": Storage()}))
    with pytest.raises(UserError, match="is not a readable network pickle"):
        safe_pickle.load(path)
    assert not (tmp_path / "pwned").exists()


def test_a_cut_pickle_is_one_line_naming_it(tmp_path):
    path = tmp_path / "cut.pkl"
    nvlabs_style_pickle(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError) as err:
        safe_pickle.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
