"""Golden tables of PGGAN's and StyleGAN's growing schedules, from their official TensorFlow code.

That code cannot run here (TensorFlow 1), but its schedule functions are plain numpy: this script
reads each function's source out of the official file, runs it, and simulates the official training
loop around it (the schedule is evaluated once per `minibatch_repeats` = 4 minibatches, and Adam's
state is reset whenever floor(lod) or ceil(lod) changes). It writes, per configuration, the value
of every schedule evaluation: images shown, lod, resolution, minibatch, G/D learning rates, and
whether the optimisers were reset there. tests/test_golden.py compares the project's
facegan/training/progressive.Schedule and the loop's reset rule with these rows.

    python -m verification.regenerate --only schedules

Sources: tkarras/progressive_growing_of_gans train.py (class TrainingSchedule; the loop's reset at
train.py:221-224) and config.py (preset-v2-1gpu); NVlabs/stylegan training/training_loop.py
(training_schedule; the reset at training_loop.py:222-225) and train.py (the FFHQ config).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np

from verification import golden_io
from verification.official import commit_of, official_repo
from verification.source import load_definitions

MINIBATCH_REPEATS = 4  # both train.py / training_loop.py: minibatch_repeats = 4


class EasyDict(dict):
    """dnnlib.EasyDict, which StyleGAN's training_schedule returns."""

    __getattr__ = dict.__getitem__

    def __setattr__(self, name, value):
        self[name] = value


def simulate(schedule_at, total_kimg: float) -> list[dict]:
    """The official loop's schedule evaluations: one per 4 minibatches, with the reset rule applied."""
    rows, cur_nimg, prev_lod = [], 0, -1.0
    while cur_nimg < total_kimg * 1000:
        s = schedule_at(cur_nimg)
        reset = bool(np.floor(s.lod) != np.floor(prev_lod) or np.ceil(s.lod) != np.ceil(prev_lod))
        prev_lod = s.lod
        rows.append(
            {
                "nimg": int(cur_nimg),
                "lod": float(s.lod),
                "resolution": int(s.resolution),
                "minibatch": int(s.minibatch),
                "G_lrate": float(s.G_lrate),
                "D_lrate": float(s.D_lrate),
                "reset": reset,
            }
        )
        cur_nimg += MINIBATCH_REPEATS * s.minibatch  # D_repeats = 1
    return rows


def pggan_table() -> dict:
    repo = official_repo("tkarras+progressive_growing_of_gans")
    namespace = {"np": np, "config": SimpleNamespace(num_gpus=1)}
    line = load_definitions(repo / "train.py", ["TrainingSchedule"], namespace)["TrainingSchedule"]
    cls = namespace["TrainingSchedule"]
    # preset-v2-1gpu's dicts (config.py:100) with short phases so that CPU tests can walk the whole schedule
    sched = dict(
        lod_initial_resolution=4,
        lod_training_kimg=1.536,
        lod_transition_kimg=1.536,
        minibatch_base=4,
        minibatch_dict={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16},
    )
    training_set = SimpleNamespace(resolution_log2=5)  # 32x32
    total_kimg = 10 * 1.536
    return {
        "source": f"tkarras/progressive_growing_of_gans@{commit_of('tkarras+progressive_growing_of_gans')} "
        f"train.py:{line} (TrainingSchedule) and train.py:221-224 (reset_opt_for_new_lod)",
        "resolution": 32,
        "sched": sched,
        "total_kimg": total_kimg,
        "rows": simulate(lambda nimg: cls(nimg, training_set, **sched), total_kimg),
    }


def stylegan_table() -> dict:
    repo = official_repo("NVlabs+stylegan")
    dnnlib = SimpleNamespace(EasyDict=EasyDict)
    namespace = {"np": np, "dnnlib": dnnlib}
    line = load_definitions(repo / "training" / "training_loop.py", ["training_schedule"], namespace)[
        "training_schedule"
    ]
    fn = namespace["training_schedule"]
    # the FFHQ config's 1-GPU dicts (train.py:46, 53-55) with short phases
    sched = dict(
        lod_initial_resolution=8,
        lod_training_kimg=1.536,
        lod_transition_kimg=1.536,
        minibatch_base=4,
        minibatch_dict={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4},
        G_lrate_dict={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
        D_lrate_dict={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
    )
    training_set = SimpleNamespace(resolution_log2=7)  # 128x128: the lr dict's first entry applies
    total_kimg = 12 * 1.536
    return {
        "source": f"NVlabs/stylegan@{commit_of('NVlabs+stylegan')} training/training_loop.py:{line} "
        "(training_schedule) and training/training_loop.py:222-225 (reset_opt_for_new_lod)",
        "resolution": 128,
        "sched": {k: ({str(r): v for r, v in d.items()} if isinstance(d, dict) else d) for k, d in sched.items()},
        "total_kimg": total_kimg,
        "rows": simulate(lambda nimg: fn(nimg, training_set, num_gpus=1, **sched), total_kimg),
    }


NAMES = ("schedules",)


def main(only: list[str] | None = None) -> None:
    pggan = pggan_table()
    pggan["sched"]["minibatch_dict"] = {str(r): v for r, v in pggan["sched"]["minibatch_dict"].items()}
    meta = golden_io.provenance("tkarras+progressive_growing_of_gans", ["train.py", "config.py"], "schedules")
    meta["also"] = {"repository": "NVlabs+stylegan", "commit": commit_of("NVlabs+stylegan")}
    tables = {"meta": meta, "pggan": pggan, "stylegan": stylegan_table()}
    out = golden_io.out_dir() / "schedules.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(tables, indent=1) + "\n")
    partial.replace(out)
    for name in ("pggan", "stylegan"):
        rows = tables[name]["rows"]
        resets = [r["nimg"] for r in rows if r["reset"]]
        print(f"{name}: {len(rows)} evaluations, resets at nimg {resets}, last lod {rows[-1]['lod']:g}")
    assert math.isfinite(rows[-1]["lod"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
