"""The project against numbers the official code produced (written by `python -m verification.regenerate` from
pinned checkouts of the official repositories into tests/golden/, or into FACEGAN_GOLDEN_DIR; no official code is
present when these tests run).

The step-level goldens are compared one step at a time from the official state (teacher forcing): the test loads
the official run's whole state before step k into the training loop, runs the loop's own step once and compares
it with the official state after step k (tests/golden_runner.py), so that no difference can compound and the
tolerances stay at one step's float32 rounding. A short free-running check from the initial weights runs too.
Each tolerance is written beside its quantity in tests/golden_runner.JUDGES with what was measured for it; every
broken rule in golden_runner.BROKEN_RULES must fail its goldens."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

import models
from facegan.settings import PgganSettings
from facegan.training import ada
from facegan.training import loss as training_loss
from facegan.training.progressive import Schedule
from facegan.training.step import new_level_of_detail
from tests.golden_runner import (
    BROKEN_RULES,
    COMMITTED,
    JUDGES,
    free_running,
    golden_dir,
    load_golden,
    over_tolerance,
    styleswin_differences,
    teacher_forced,
)
from tests.helpers import model_settings

torch.set_num_threads(1)
STEP_LEVEL = ("stylegan2", "stylegan3_t", "stylegan3_r", "r3gan", "dcgan")
REPOSITORIES = {
    "stylegan2": "NVlabs+stylegan3",
    "stylegan3_t": "NVlabs+stylegan3",
    "stylegan3_r": "NVlabs+stylegan3",
    "r3gan": "brownvc+R3GAN",
    "dcgan": "pytorch+examples",
    "styleswin": "microsoft+StyleSwin",
    "ada": "NVlabs+stylegan3",
}
VERIFICATION = Path(__file__).resolve().parents[1] / "verification"


def schedule_table(name: str) -> dict:
    return json.loads((golden_dir() / "schedules.json").read_text())[name]


def our_schedule(table: dict, batch_sizes: list[int], lrs: list[float]) -> Schedule:
    sched = table["sched"]
    params = {
        "kimg": table["total_kimg"],
        "batch_size": batch_sizes[-1],
        "lr_g": 0.001,
        "lr_d": 0.001,
        "progressive": {
            "initial_resolution": sched["lod_initial_resolution"],
            "stable_kimg": [sched["lod_training_kimg"]],
            "fade_kimg": [sched["lod_transition_kimg"]],
            "batch_sizes": batch_sizes,
            "lrs": lrs,
            "reset_optimizer": True,
        },
    }
    section = model_settings("pggan").model_dump() | params  # the schedule reads these keys; the rest is the study's
    return Schedule.progressive(
        "golden", PgganSettings.model_validate(section), int(math.log2(table["resolution"])) - 2
    )


# The growing models' per-level lists as params.yaml writes them, for the official dicts of the tables
SCHEDULES = {
    "pggan": ([128, 128, 128, 64], []),  # preset-v2-1gpu minibatch_dict at 4..32; lr 0.001 everywhere
    "stylegan": ([128, 128, 128, 64, 32, 16], [0.001] * 5 + [0.0015]),  # FFHQ config at 4..128
}


@pytest.mark.parametrize("model", ["pggan", "stylegan"])
def test_the_growing_schedule_has_the_official_resolution_alpha_batch_and_lr(model):
    """Every official schedule evaluation that is not on a segment boundary (there the official lod is
    still the integer of the level below for 4 more minibatches) gives our resolution, alpha, batch and lr."""
    table = schedule_table(model)
    schedule = our_schedule(table, *SCHEDULES[model])
    boundaries = {s.start_nimg for s in schedule.segments}
    compared = 0
    for row in table["rows"]:
        if row["nimg"] in boundaries:
            continue
        segment = schedule.segment_at(row["nimg"])
        lod = row["lod"]
        fraction = lod - math.floor(lod)
        official_alpha = 1.0 if fraction < 1e-9 else 1.0 - fraction
        assert segment.resolution == row["resolution"], row
        assert segment.alpha(row["nimg"]) == pytest.approx(official_alpha, abs=1e-9), row
        assert segment.batch_size == row["minibatch"], row
        assert (segment.lr_g, segment.lr_d) == pytest.approx((row["G_lrate"], row["D_lrate"])), row
        compared += 1
    assert compared >= 30


@pytest.mark.parametrize("model", ["pggan", "stylegan"])
def test_adam_is_reset_where_the_official_loop_resets_it(model):
    """reset_opt_for_new_lod: the official loop resets Adam when floor(lod) or ceil(lod) changes - at the start
    and at the end of every fade. It evaluates the schedule every 4 minibatches, so each of its resets must be
    within one evaluation (4 minibatches) of one of ours, and there must be as many."""
    table = schedule_table(model)
    schedule = our_schedule(table, *SCHEDULES[model])
    ours = [
        seg.start_nimg for prev, seg in zip(schedule.segments, schedule.segments[1:]) if new_level_of_detail(prev, seg)
    ]
    rows = table["rows"]
    official = [(before["nimg"], row["nimg"]) for before, row in zip(rows, rows[1:]) if row["reset"]]
    assert len(ours) == len(official), (ours, official)
    for at, (previous_evaluation, reset_evaluation) in zip(ours, official):
        assert previous_evaluation <= at <= reset_evaluation, (ours, official)


def test_the_ada_pipe_gives_nvlabs_augmentpipe_images_and_draws_at_the_same_random_state():
    """training/augment.py's bgc pipe at p = 0, 0.2, 0.6, 1 (golden: verification/golden_ada.py): the same images
    to float rounding, and the same next random draw (both pipes took the same random numbers in the same order)."""
    golden = load_golden("ada")
    for p, seed, expected, next_draw in zip(golden["ps"], golden["seeds"], golden["outputs"], golden["next_draws"]):
        pipe = ada.AugmentPipe(p=float(p))
        torch.manual_seed(int(seed))
        torch.testing.assert_close(pipe(golden["faces"]), expected, atol=5e-5, rtol=0)
        assert torch.equal(torch.rand(4), next_draw), float(p)


def test_r1_through_the_ada_pipe_has_nvlabs_second_derivative():
    """R1 of a tiny conv D on augmented reals, differentiated w.r.t. D's weight (the official double backward
    through grid_sample_gradfix) against ours through torch's grid_sample."""
    golden = load_golden("ada")
    r1 = golden["r1"]
    weight = r1["weight"].clone().requires_grad_(True)
    pipe = ada.AugmentPipe(p=float(r1["p"]))
    x = golden["faces"].clone().requires_grad_(True)
    torch.manual_seed(int(r1["seed"]))
    logits = torch.nn.functional.conv2d(pipe(x), weight, padding=1).square().mean(dim=(1, 2, 3))
    penalty = training_loss.r1_penalty(
        logits, x, gamma=2.0
    )  # gamma/2 = 1: the golden's plain sum of squares, batch mean
    (grad,) = torch.autograd.grad(penalty, weight)
    torch.testing.assert_close(grad, r1["grad_weight"], rtol=1e-4, atol=1e-6)


def test_adas_p_follows_the_official_heuristic_over_a_scripted_sign_sequence():
    """16 steps of real logits (Dmain each step, Dreg at step 0) through our tally and update, every 4th step,
    against training_loop.py's own ADA block and training_stats Collector: p exactly equal after every step."""
    golden = load_golden("ada")
    params = json.loads(golden["params"])
    rule = ada.AdaRule(target=params["ada_target"], interval=params["ada_interval"], kimg=params["ada_kimg"])
    pipe, tally = ada.AugmentPipe(p=0.0), ada.SignTally()
    for step, (logits, expected) in enumerate(zip(golden["signs"]["logits"], golden["signs"]["p_after"])):
        tally.add(logits)
        if step % 16 == 0:
            tally.add(logits)
        if (step + 1) % rule.interval == 0:
            ada.update_p(pipe, rule, tally, params["batch_size"], lambda t: t)
        assert float(pipe.p) == float(expected), step
    assert max(golden["signs"]["p_after"]) > 0  # the script moved p up and back down


@pytest.mark.parametrize("name", STEP_LEVEL)
def test_each_step_matches_the_official_step_from_the_official_state(name, tmp_path):
    """stylegan2: NVlabs' Gmain, Greg with path length, Dmain, Dreg with the lazy Adam correction, the G EMA's
    ramp-up, style mixing, x-flips and ADA's p update (steps 0-4 and 16 of 17); stylegan3_t: the magnitude EMAs
    and p's update; stylegan3_r: D's blur at 10, 5, 2.5 and 0 px; r3gan: RpGAN with R1 and R2 through the --aug=1
    pipe and every cosine schedule; dcgan: pytorch/examples' iteration. Per forced step: every loss term, every
    phase's gradient, the weights, G_ema, Adam's moments and steps, the path-length target, p and the sign tally."""
    golden = load_golden(name)
    assert golden["meta"]["repository"] == REPOSITORIES[name]
    judge = JUDGES[name]
    for step, differences in teacher_forced(golden, tmp_path, judge.skip).items():
        assert not over_tolerance(differences, judge), (name, step, over_tolerance(differences, judge))


@pytest.mark.parametrize("name", STEP_LEVEL)
def test_the_first_steps_run_freely_from_the_initial_weights_to_the_official_state(name, tmp_path):
    golden = load_golden(name)
    assert golden["free_steps"] >= 2 or name == "stylegan3_r" and golden["free_steps"] >= 1
    differences = free_running(golden, tmp_path, JUDGES[name].skip)
    assert not over_tolerance(differences, JUDGES[name]), (name, over_tolerance(differences, JUDGES[name]))


def test_styleswin_trains_step_for_step_as_microsofts_train_styleswin(tmp_path):
    """2 iterations of train_styleswin.py's loop body (D on fakes and reals with bCR, D's gradient clipped at 5,
    R1 at step 0 times the interval 16, G; accumulate() into G_ema) at the official widths, in the official
    ImageNet-normalised units. Free-running: the official networks are too large to store each step's state."""
    golden = load_golden("styleswin")
    assert golden["meta"]["repository"] == "microsoft+StyleSwin" and (golden["clip_norms"] > 5).all()  # clip active
    differences = styleswin_differences(golden, tmp_path)
    assert not over_tolerance(differences, JUDGES["styleswin"]), over_tolerance(differences, JUDGES["styleswin"])


@pytest.mark.parametrize(
    "rule, name", [(rule, name) for rule, broken in BROKEN_RULES.items() for name in broken.goldens]
)
def test_a_golden_fails_when_an_official_rule_is_broken(rule, name, monkeypatch, tmp_path):
    """R1's interval scaling dropped, the path-length decay doubled, ADA's sign flipped, the lazy lr without its
    c, StyleGAN3-R's blur kept, R3GAN's R2 dropped, StyleSwin's data range removed, bCR's real half dropped: each
    takes some quantity of some forced step past its tolerance."""
    BROKEN_RULES[rule].apply(monkeypatch)
    golden = load_golden(name)
    if name == "styleswin":
        over = over_tolerance(styleswin_differences(golden, tmp_path), JUDGES[name])
    else:
        forced = teacher_forced(golden, tmp_path, JUDGES[name].skip)
        over = {k: found for k, d in forced.items() if (found := over_tolerance(d, JUDGES[name]))}
    assert over, f"{name} still matches with {rule}"


@pytest.mark.parametrize("name", [*REPOSITORIES, "schedules"])
def test_every_golden_says_where_it_came_from_and_the_command_that_remakes_it(name):
    """meta: the official repository and commit, the project commit whose verification/ wrote it, the command
    (which must exist in verification/ and name this golden), torch, the CPU and its threads."""
    if name == "schedules":
        meta = json.loads((golden_dir() / "schedules.json").read_text())["meta"]
    else:
        meta = torch.load(golden_dir() / f"{name}.pt", weights_only=True)["meta"]
    assert {"repository", "commit", "command", "project_commit", "torch", "cpu", "threads", "date"} <= set(meta)
    assert len(meta["commit"]) == 40 and meta["project_commit"] not in ("", "unknown")
    if golden_dir() == COMMITTED:  # a committed golden is only proof if committed code wrote it
        assert not meta["project_commit"].endswith("+dirty"), meta["project_commit"]
    words = shlex.split(meta["command"])
    assert words[:3] == ["python", "-m", "verification.regenerate"] and words[words.index("--only") + 1] == name
    assert (VERIFICATION / "regenerate.py").is_file()
    from verification.regenerate import GOLDENS  # no official code is imported until a golden is written

    assert name in GOLDENS


def test_r3gan_networks_give_brownvc_r3gans_outputs():
    """G(z) and D(x) of R3GAN/Networks.py (through training/networks.py) holding our initial weights
    (golden: verification/golden_r3gan.py)."""
    golden = load_golden("r3gan")
    G, D = models.build("r3gan", json.loads(golden["params"])["arch"], int(golden["resolution"]))
    G.load_state_dict(golden["init"]["G"])
    D.load_state_dict(golden["init"]["D"])
    with torch.no_grad():
        torch.testing.assert_close(G(golden["outputs"]["z"]), golden["outputs"]["G"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(D(golden["outputs"]["x"]), golden["outputs"]["D"], rtol=1e-5, atol=1e-6)


def test_r3gan_schedules_are_the_official_cosine_at_three_points_of_training():
    """cosine_decay_with_warmup of the FFHQ presets (lr, beta2, gamma, EMA images, augment p over 20M images)
    at 0, 5M and 15M images, and past the decay, against our schedule of the same start and end values."""
    from facegan.training.values import StepSchedule

    golden = load_golden("r3gan")
    presets = {"FFHQ-64": (2.0, 0.2), "FFHQ-256": (150.0, 15.0)}  # gamma's start and end
    for preset, (gamma, gamma_final) in presets.items():
        params = model_settings("r3gan", loss={"r1_gamma": gamma}, cosine={"gamma_final": gamma_final})
        values = StepSchedule(params, Schedule.for_model("r3gan", params, 3, False))
        for row in golden["schedules"][preset]:
            ours = values.at(row["nimg"])
            expected = (row["lr"], row["lr"], row["beta2"], row["gamma"], row["ema"], row["aug"])
            got = (ours.lr_g, ours.lr_d, ours.beta2_g, ours.r1_gamma, ours.ema_half_life_nimg, ours.augment_p)
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (preset, row)
