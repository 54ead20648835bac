"""The project against numbers the official code produced (tests/golden/, written by verification/*.py from
pinned checkouts of the official repositories; no official code is present when these tests run).

Each golden file records the repository, its commit and the command that wrote it. Tolerances are stated
beside each comparison: float32 on CPU, the official and our code summing in different orders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import models
from facegan.data.cache import CacheWriter, FaceCache
from facegan.handoff import ModelView
from facegan.settings import PgganSettings
from facegan.training import ada, distributed, loop, losses, phases, terms
from facegan.training import step as training_step
from facegan.training.phases import build_phases
from facegan.training.progressive import Schedule
from facegan.training.step import new_level_of_detail
from tests.helpers import cpu_train, model_settings, offset_biases

GOLDEN = Path(__file__).with_name("golden")
CPU = torch.device("cpu")
torch.set_num_threads(1)


def load_golden(name: str) -> dict:
    return torch.load(GOLDEN / f"{name}.pt", weights_only=True)


def gradient_record(module: torch.nn.Module, sample: int) -> dict[str, torch.Tensor]:
    """As verification/golden_io.gradient_record: the whole gradient's norm and a strided sample of it."""
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in module.parameters()])
    stride = max(1, flat.numel() // sample)
    return {"norm": flat.norm(), "sample": flat[::stride][:sample]}


def tensor_norms(module_or_tensors, names: list[str]) -> torch.Tensor:
    """(norm, sum) per tensor `names` (as verification/golden_styleswin.tensor_norms); no gradient counts as 0."""
    tensors = module_or_tensors if isinstance(module_or_tensors, dict) else dict(module_or_tensors.named_parameters())
    rows = [
        (0.0, 0.0) if tensors[n] is None else (tensors[n].double().norm().item(), tensors[n].double().sum().item())
        for n in names
    ]
    return torch.tensor(rows, dtype=torch.float64)


def assert_norms_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float, what: str, sum_atol: float | None = None):
    """Per-tensor (norm, sum): norms within rtol (or rtol of the network's largest norm); sums, which cancel, within
    sum_atol (default rtol) times the network's largest norm."""
    scale = float(theirs[:, 0].max())
    torch.testing.assert_close(
        ours[:, 0], theirs[:, 0], rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what} norms: {m}"
    )
    atol = (rtol if sum_atol is None else sum_atol) * scale
    torch.testing.assert_close(ours[:, 1], theirs[:, 1], rtol=rtol, atol=atol, msg=lambda m: f"{what} sums: {m}")


class OurRun:
    """The training loop's own step (facegan.training.step.StepRunner) on a golden file's faces, params, seed
    and initial weights, with each optimiser's first gradient recorded."""

    def __init__(self, golden: dict, tmp_path: Path):
        params, faces = json.loads(golden["params"]), golden["faces"].numpy()
        params["augment"].setdefault("pipe", "bgc")  # goldens written before the key ran ADA's bgc pipe
        resolution, model = int(golden["resolution"]), golden["model"]
        writer = CacheWriter(tmp_path / "faces", resolution, len(faces))
        for face in faces:
            writer.add(face)
        cache = FaceCache(writer.finish(source="golden", synthetic=True))
        cfg = ModelView.selected_run(
            model=model, params=params, train=cpu_train(), seed=int(golden["seed"]), resolution=resolution
        )
        spec = models.get_spec(model)
        schedule = Schedule.for_model(model, cfg.params, int(math.log2(resolution)) - 2, spec.progressive)
        phases = build_phases(cfg.params.loss)
        world = distributed.World()
        torch.manual_seed(int(golden["seed"]))  # the initial weights the official run started from, drawn again
        self.state = loop.build_state(cfg, spec, phases, CPU, torch.float32, world)
        if isinstance(golden["init"]["G"], dict):  # stored weights
            self.state.G.load_state_dict(golden["init"]["G"])
            self.state.D.load_state_dict(golden["init"]["D"])
            self.state.G_ema.load_state_dict(golden["init"]["G"])
        else:  # networks too large to store: their per-tensor (norm, sum), which models.build must draw again
            if golden.get("offset_biases"):
                offset_biases(self.state.D, int(golden["seed"]))
            for net in ("G", "D"):
                drawn = tensor_norms(getattr(self.state, net), golden["names"][net])
                assert torch.allclose(drawn, golden["init"][net], rtol=1e-9, atol=0), (
                    f"models.build no longer draws the golden's initial {net} for seed {int(golden['seed'])}: "
                    f"regenerate it with `{golden['meta']['command']}`"
                )
        self.runner = training_step.StepRunner(cfg, spec, schedule, phases, cache, world, CPU, torch.float32)
        self.gradients: dict[str, list[dict]] = {"G": [], "D": []}
        for net, opt in (("G", self.state.opt_G), ("D", self.state.opt_D)):
            opt.step = self._spy(opt.step, net)

    def _spy(self, step, net: str):
        def recorded_step(*args, **kwargs):
            module = getattr(self.state, net)
            record = gradient_record(module, 256)
            record["tensors"] = {name: p.grad for name, p in module.named_parameters()}
            self.gradients[net].append(record)
            return step(*args, **kwargs)

        return recorded_step

    def step(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.runner.run(self.state).terms.items()}


def assert_state_dicts_close(
    ours: dict, theirs: dict, atol: float, rtol: float, what: str, skip: tuple[str, ...] = ()
) -> None:
    assert set(ours) == set(theirs), what
    for key, expected in theirs.items():
        if expected.is_floating_point() and not key.endswith(skip):
            torch.testing.assert_close(
                ours[key], expected, atol=atol, rtol=rtol, msg=lambda m, k=key: f"{what} {k}: {m}"
            )


def assert_matches_golden(
    golden: dict,
    tmp_path: Path,
    loss_rtol: float,
    grad_rtol: float,
    atol: float,
    rtol: float,
    skip: tuple[str, ...] = (),
):
    """Run the golden's steps through the loop; compare every phase's loss terms, each optimiser's first
    gradient (norm and sample) and the final G and D (but state-dict entries ending in `skip`)."""
    run = OurRun(golden, tmp_path)
    for index, expected in enumerate(golden["steps"]):
        terms = run.step()
        assert set(terms) == {name for phase_terms in expected.values() for name in phase_terms}, index
        for phase, phase_terms in expected.items():
            for name, value in phase_terms.items():
                assert terms[name] == pytest.approx(float(value), rel=loss_rtol, abs=1e-7), (index, phase, name)
        if "augment_p" in golden:  # ADA's p after the step, exactly
            assert float(run.state.loss.augment_pipe.p) == float(golden["augment_p"][index]), index
    for phase, record in golden["gradients"].items():
        ours = run.gradients[phase[0]][0 if phase.endswith(("main", "both")) else 1]
        assert float(ours["norm"]) == pytest.approx(float(record["norm"]), rel=grad_rtol), phase
        torch.testing.assert_close(
            ours["sample"], record["sample"], rtol=grad_rtol, atol=grad_rtol * float(record["norm"])
        )
    assert_state_dicts_close(run.state.G.state_dict(), golden["final"]["G"], atol, rtol, "G", skip)
    assert_state_dicts_close(run.state.D.state_dict(), golden["final"]["D"], atol, rtol, "D", skip)
    if "G_ema" in golden["final"]:
        assert_state_dicts_close(run.state.G_ema.state_dict(), golden["final"]["G_ema"], atol, rtol, "G_ema", skip)
    return run


def schedule_table(name: str) -> dict:
    return json.loads((GOLDEN / "schedules.json").read_text())[name]


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


def test_dcgan_trains_step_for_step_as_pytorchs_dcgan_example(tmp_path):
    """pytorch/examples dcgan/main.py's loop body, 4 iterations (D on reals and fakes, then G on the same fakes),
    against our loop with latents per_step, no flips, no EMA (golden: verification/golden_dcgan.py). BatchNorm's
    running statistics are not compared: the example runs G once per iteration and our loop twice (Dmain, Gmain),
    and neither samples with them (the example: batch statistics; the study: re-estimated for G_ema)."""
    golden = load_golden("dcgan")
    assert golden["meta"]["repository"] == "pytorch+examples"
    running = ("running_mean", "running_var", "num_batches_tracked")
    # Step 0's gradients agree to 1e-7 on any CPU; after that G's BatchNorm batch statistics carry the float32
    # kernels' differences between CPUs into every weight: on an AMD EPYC (AVX2) against the Intel-made golden
    # the 4 steps' losses differ by up to 1.2e-4 (relative) and G's weights by up to 2.1e-4 (one Adam move at
    # lr 2e-4), hence 5e-4 for both
    assert_matches_golden(golden, tmp_path, loss_rtol=5e-4, grad_rtol=1e-4, atol=5e-4, rtol=1e-4, skip=running)


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
    penalty = losses.r1_penalty(logits, x, gamma=2.0)  # gamma/2 = 1: the golden's plain sum of squares, batch mean
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


# Final weights at atol 2e-4: the goldens were made on an Intel CPU (AVX-512); on an AMD EPYC (AVX2) one of
# StyleGAN2's 13,465 D weights lands 1.6e-4 away after 16 steps (a near-zero gradient's float32 rounding moves
# it by a fraction of an Adam step, lr 0.0025) while every loss still agrees to 2.2e-6 and the gradients to 8e-7.
NVLABS_TOLERANCES = dict(loss_rtol=2e-5, grad_rtol=1e-4, atol=2e-4, rtol=1e-4)


def test_stylegan2_trains_step_for_step_as_nvlabs_stylegan2(tmp_path):
    """17 steps of NVlabs' StyleGAN2Loss phases (Gmain; Greg with path length at steps 0, 4, 8, 12, 16; Dmain;
    Dreg with R1 at 0 and 16), each with its lazily rescaled Adam, the G EMA with its ramp-up, style mixing 0.9,
    x-flips and ADA (p from 0.2, updated every 4 steps by the official block) against our loop's own step
    (golden: verification/golden_nvlabs.py)."""
    golden = load_golden("stylegan2")
    assert golden["meta"]["repository"] == "NVlabs+stylegan3"
    assert_matches_golden(golden, tmp_path, **NVLABS_TOLERANCES)


def test_stylegan3_t_trains_step_for_step_as_nvlabs_stylegan3(tmp_path):
    """5 steps of StyleGAN3-T (Gmain without path length, Dmain, Dreg), magnitude EMAs, ADA."""
    assert_matches_golden(load_golden("stylegan3_t"), tmp_path, **NVLABS_TOLERANCES)


def test_stylegan3_r_trains_step_for_step_as_nvlabs_stylegan3_with_the_blur_fade(tmp_path):
    """6 steps of StyleGAN3-R with D's blur from 10 px fading to 0 at step 4 (blur_fade_kimg 0.032): the blur
    sigma the loop passes, the blur itself, before ADA, in every phase."""
    golden = load_golden("stylegan3_r")
    assert json.loads(golden["params"])["loss"]["blur_init_sigma"] == 10.0
    assert_matches_golden(golden, tmp_path, **NVLABS_TOLERANCES)


def _drop_r1_interval(monkeypatch):
    monkeypatch.setattr(phases, "LAZY_TERMS", (terms.G_PATH_LENGTH,))  # R1 no longer times its 16-step interval


def _double_pl_decay(monkeypatch):
    monkeypatch.setattr(losses, "PL_DECAY", 0.02)  # official pl_decay = 0.01


def _flip_ada_sign(monkeypatch):
    adjust = ada.AdaRule.adjust
    monkeypatch.setattr(ada.AdaRule, "adjust", lambda rule, mean_sign, batch: -adjust(rule, mean_sign, batch))


@pytest.mark.parametrize("break_rule", [_drop_r1_interval, _double_pl_decay, _flip_ada_sign])
def test_the_stylegan2_golden_fails_when_an_official_rule_is_broken(break_rule, monkeypatch, tmp_path):
    """The golden comparison can fail: with R1's interval scaling dropped, the path-length decay doubled or the
    sign of ADA's p update flipped, our run no longer matches NVlabs' numbers."""
    break_rule(monkeypatch)
    with pytest.raises(AssertionError):
        assert_matches_golden(load_golden("stylegan2"), tmp_path, **NVLABS_TOLERANCES)


def test_styleswin_trains_step_for_step_as_microsofts_train_styleswin(tmp_path):
    """2 iterations of train_styleswin.py's loop body (D on fakes and reals with bCR, D's gradient clipped at 5,
    R1 at step 0 times the interval 16, G; accumulate() into G_ema) at the official widths, in the official
    ImageNet-normalised units, against our loop's step (golden: verification/golden_styleswin.py)."""
    golden = load_golden("styleswin")
    assert golden["meta"]["repository"] == "microsoft+StyleSwin" and (golden["clip_norms"] > 5).all()  # clip active
    run = OurRun(golden, tmp_path)
    for index, expected in enumerate(golden["steps"]):
        ours = run.step()
        for phase, phase_terms in expected.items():
            for name, value in phase_terms.items():
                value_ours = sum(ours[part] for part in name.split("+"))
                assert value_ours == pytest.approx(float(value), rel=1e-4), (index, phase, name)
    names = golden["names"]
    for phase, record in golden["gradients"].items():
        net = phase[0]
        ours = run.gradients[net][0 if phase.endswith("main") else 1]["tensors"]
        assert_norms_close(tensor_norms(ours, names[net]), record, 1e-4, f"{phase} gradient")
    # after two Adam steps, which move every weight by about lr whatever its gradient's size, the float32 rounding
    # of the tiniest gradients flips a few of those moves: the weights' sums carry it, their norms barely
    for net in ("G", "D", "G_ema"):
        ours = tensor_norms(getattr(run.state, net), names[net[0]])
        assert_norms_close(ours, golden["final"][net], 1e-4, net, sum_atol=2e-3)


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


def test_r3gan_trains_step_for_step_as_brownvc_r3gan(tmp_path):
    """4 iterations of the official loop body: the D phase (RpGAN + R1 + R2 at gamma/2, reals and fakes through
    the --aug=1 pipe), then the G phase on its own reals, with lr, beta2, gamma, the EMA length and p on the
    official cosine (a 32-image decay, so that each moves): losses, first gradients, p, final G, D and G_ema."""
    golden = load_golden("r3gan")
    assert golden["meta"]["repository"] == "brownvc+R3GAN"
    assert_matches_golden(golden, tmp_path, loss_rtol=1e-5, grad_rtol=1e-4, atol=2e-6, rtol=1e-4)


def test_r3gan_schedules_are_the_official_cosine_at_three_points_of_training():
    """cosine_decay_with_warmup of the FFHQ presets (lr, beta2, gamma, EMA images, augment p over 20M images)
    at 0, 5M and 15M images, and past the decay, against our schedule of the same start and end values."""
    from facegan.training.cosine import cosine_values
    from tests.helpers import model_settings

    golden = load_golden("r3gan")
    presets = {"FFHQ-64": (2.0, 0.2), "FFHQ-256": (150.0, 15.0)}  # gamma's start and end
    for preset, (gamma, gamma_final) in presets.items():
        params = model_settings("r3gan", loss={"r1_gamma": gamma}, cosine={"gamma_final": gamma_final})
        for row in golden["schedules"][preset]:
            ours = cosine_values(params, row["nimg"])
            expected = (row["lr"], row["lr"], row["beta2"], row["gamma"], row["ema"], row["aug"])
            got = (ours.lr_g, ours.lr_d, ours.beta2_g, ours.r1_gamma, ours.ema_nimg, ours.augment_p)
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (preset, row)
