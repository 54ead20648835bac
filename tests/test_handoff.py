"""The hand-off readers (facegan/handoff.py): what a stage reads from another is checked against its declared shape,
and a missing, corrupt or other-shaped file is one line naming the file, the key and the stage that writes it."""

import json

import pytest

from facegan import handoff
from facegan.errors import UserError

RERUN_TRAIN = "re-run `dvc repro train-<model>`"


def trained_run() -> dict:
    """runs/<model>/train_stats.json as the train stage writes it (a tiny run, one history row)."""
    row = handoff.HistoryRow(kimg=0.5, step=4, train_seconds=2.0, img_per_s=16.0, segment="train16", level=2,
                             resolution=16, alpha=1.0, lr_g=0.002, lr_d=0.002, peak_memory_gib=None, augment_p=None,
                             losses={"D/adversarial": 1.3, "G/adversarial": 0.7})  # fmt: skip
    return handoff.TrainedRun(
        status="trained", model="dcgan", paper="Radford et al. 2016", resolution=16, resolutions_reached=[16],
        kimg=0.5, steps=4, batch_size=128, world_size=1, train_seconds=2.0, img_per_s=16.0, device="cpu",
        device_name="cpu", precision="float32", peak_memory_bytes=None, params_G=10, params_D=20, history=[row],
        schedule=[], segments={}, training_phases=["Dmain", "Gmain"], dvclive=False, kernel_fallbacks={},
        cache_fingerprint="0123456789abcdef", augment="none", augment_p=None, xflip=True, data_space="unit",
        ema_kimg=0.0, batchnorm="re-estimated", stopped_by="kimg", budget_minutes=0.0,
    ).to_dict()  # fmt: skip


def read_error(path, data) -> str:
    path.write_text(json.dumps(data))
    with pytest.raises(handoff.HandoffError) as err:
        handoff.read_train_stats(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_train_stats_round_trip_and_every_key_of_it_is_required(tmp_path):
    """Evaluate and report read what train wrote, unchanged; a file that lacks any one key (a writer that renamed
    it, an older version) is refused naming that key, never read with a default."""
    path = tmp_path / "train_stats.json"
    handoff.TrainedRun.model_validate(trained_run()).write(path)
    assert handoff.read_train_stats(path).to_dict() == trained_run()
    for key in trained_run():
        data = {k: v for k, v in trained_run().items() if k != key}
        expected = f"{path} does not have the shape of TrainedRun (missing {key}): it was written by other code; "
        assert read_error(path, data) == expected + RERUN_TRAIN, key
    renamed = {k: v for k, v in trained_run().items() if k != "ema_kimg"} | {"ema_half_life_kimg": 0.0}
    assert "(missing ema_kimg; unknown ema_half_life_kimg): it was written by other code" in read_error(path, renamed)


def test_a_value_of_another_type_is_refused_naming_its_key_and_value(tmp_path):
    """Strict types: the string "16" is not the resolution 16, 4.0 steps is not 4 (a float where JSON had an int),
    and a key deep in the file is named by its whole path."""
    path = tmp_path / "train_stats.json"
    assert read_error(path, {**trained_run(), "resolution": "16"}) == (
        f"{path}: TrainedRun.resolution input should be a valid integer, got '16': {RERUN_TRAIN}"
    )
    assert "TrainedRun.steps input should be a valid integer, got 4.0" in read_error(
        path, {**trained_run(), "steps": 4.0}
    )
    history = trained_run()["history"]
    del history[0]["kimg"]
    message = read_error(path, {**trained_run(), "history": history})
    assert message.startswith(f"{path}: TrainedRun.history.0.kimg field required, got ") and RERUN_TRAIN in message
    message = read_error(path, {**trained_run(), "augment": "sometimes"})
    assert "TrainedRun.augment input should be 'ada', 'fixed', 'cosine' or 'none', got 'sometimes'" in message


def test_a_skipped_run_reads_as_skipped_and_a_file_that_is_no_object_is_refused(tmp_path):
    path = tmp_path / "train_stats.json"
    handoff.SkippedRun(status="skipped", model="pggan", reason="not selected (model=dcgan)").write(path)
    skipped = handoff.read_train_stats(path)
    assert isinstance(skipped, handoff.SkippedRun) and skipped.reason == "not selected (model=dcgan)"
    assert read_error(path, [trained_run()]) == f"{path} is not a TrainedRun (a JSON object): {RERUN_TRAIN}"


def test_each_item_of_a_list_file_is_checked_and_named_by_its_index(tmp_path):
    """evals/<model>/fid_vs_kimg.json: the bad point is named, so that the user sees which snapshot's entry it is."""
    path = tmp_path / "fid_vs_kimg.json"
    point = {"kimg": 0.0, "train_hours": None, "fid": 300.0, "num_gen": 64, "label_key": "proxy", "resolution": 16}
    handoff.write_list(path, [handoff.FidPoint(**point), handoff.FidPoint(**{**point, "kimg": 0.5, "fid": 200.0})])
    assert [p.fid for p in handoff.read_list(handoff.FidPoint, path)] == [300.0, 200.0]
    path.write_text(json.dumps([point, {k: v for k, v in point.items() if k != "num_gen"}]))
    with pytest.raises(handoff.HandoffError) as err:
        handoff.read_list(handoff.FidPoint, path)
    assert str(err.value) == (
        f"{path}[1] does not have the shape of FidPoint (missing num_gen): it was written by other code; "
        "re-run `dvc repro evaluate-<model>`"
    )


def test_a_missing_or_corrupt_hand_off_is_one_line_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "runs" / "dcgan" / "train_stats.json"
    with pytest.raises(UserError) as err:
        handoff.read_train_stats(path)
    assert str(err.value) == f"{path} is missing: run the stage that writes it (dvc repro)"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(trained_run())[:-40])  # cut off mid-write by hand
    with pytest.raises(UserError) as err:
        handoff.read_train_stats(path)
    assert str(err.value).startswith(f"{path} is not valid JSON (") and "delete it and re-run its stage" in str(
        err.value
    )
