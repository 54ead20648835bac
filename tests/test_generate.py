"""`python -m facegan.generate`: images of a trained run by seed, laid out as files, a grid, strips or a GIF,
the same pixels for the same seed, and one-line errors for bad seeds, missing or untrained models, bad psi."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from facegan import checkpoint, generate, handoff, stage_params
from facegan.params import load_params

REPO = Path(__file__).resolve().parents[1]
RES = 32  # the demo profile's data.resolution
TRAIN_HINT = "`dvc repro train-{m}` or `dvc exp run -S model={m}`"


def trained_stats(model: str) -> handoff.TrainedRun:
    return handoff.TrainedRun(
        status="trained",
        model=model,
        paper="p",
        resolution=RES,
        resolutions_reached=[RES],
        kimg=1.0,
        steps=10,
        batch_size=8,
        world_size=1,
        train_seconds=1.0,
        img_per_s=10.0,
        device="cpu",
        device_name="cpu",
        precision="float32",
        peak_memory_bytes=None,
        params_G=1,
        params_D=1,
        history=[],
        schedule=[],
        segments={},
        training_phases=["Gmain", "Dmain"],
        dvclive=False,
        kernel_fallbacks={},
        cache_fingerprint="0123456789abcdef",
        augment="none",
        augment_p=None,
        xflip=True,
        data_space="unit",
        ema_kimg=10.0,
        batchnorm="none",
        stopped_by="kimg",
        budget_minutes=0.0,
    )


def save_trained_run(runs: Path, model: str, arch: dict) -> None:
    """A run as the train stage leaves it, with a freshly built G standing in for a trained one."""
    torch.manual_seed(0)
    G, _ = models.build(model, arch, RES)
    with torch.no_grad():  # an untrained G has w_avg = 0 and silent noise: make both matter
        for name, value in G.named_buffers():
            if name.endswith("w_avg"):
                value.normal_()
        for name, value in G.named_parameters():
            if name.endswith("noise.strength"):
                value.fill_(0.5)
            elif model == "dcgan" and value.ndim == 4:  # its N(0, 0.02) init draws flat grey for every seed
                value.normal_(0, value.shape[0] ** -0.5)
    final_level = RES.bit_length() - 3  # level k is 4 * 2**k
    checkpoint.save(
        runs / model / "G_ema.pt", {"G_ema": G.state_dict(), "kimg": 1.0, "level": final_level, "alpha": 1.0}
    )
    trained_stats(model).write(runs / model / "train_stats.json")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """runs/ of a demo-profile study: stylegan2 and dcgan trained, pggan skipped, stylegan unfinished."""
    root = tmp_path_factory.mktemp("project")
    runs = root / "runs"
    params = load_params(REPO / "params.yaml", {"profile": "demo"})
    stage_params.write_views(params, runs / "config")
    for model in ("stylegan2", "dcgan"):
        save_trained_run(runs, model, params["models"][model]["arch"])
    handoff.SkippedRun(status="skipped", model="pggan", reason="not selected (model=stylegan2)").write(
        runs / "pggan" / "train_stats.json"
    )
    trained_stats("stylegan").write(runs / "stylegan" / "train_stats.json")  # no G_ema.pt: interrupted
    return root


@pytest.fixture
def in_project(project, monkeypatch) -> Path:
    monkeypatch.chdir(project)  # the defaults: runs/ and out/<model>/ under the working directory
    return project


def run(monkeypatch, *args: str) -> list[Path]:
    monkeypatch.setattr(sys, "argv", ["generate.py", *args])
    return generate.main()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_images_writes_one_png_per_seed_at_the_model_resolution(in_project, monkeypatch, capsys):
    written = run(monkeypatch, "--model", "stylegan2", "--seeds", "0-2,7")
    expected = [Path("out/stylegan2") / f"seed{s:04d}.png" for s in (0, 1, 2, 7)]
    assert written == expected
    assert capsys.readouterr().out.splitlines() == [f"wrote {p}" for p in expected]
    for path in expected:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (RES, RES) and image.mode == "RGB"
    assert not (pixels(expected[0]) == pixels(expected[1])).all()


@pytest.mark.parametrize("noise", ["const", "random"])
def test_a_seed_gives_the_same_image_whatever_else_is_asked(in_project, monkeypatch, noise):
    a = run(monkeypatch, "--model", "stylegan2", "--seeds", "5", "--noise-mode", noise, "--outdir", f"a_{noise}")
    b = run(monkeypatch, "--model", "stylegan2", "--seeds", "3-5", "--noise-mode", noise, "--outdir", f"b_{noise}")
    assert a[0].read_bytes() == b[-1].read_bytes()


def test_noise_mode_changes_the_image_of_a_model_with_noise(in_project, monkeypatch):
    images = {
        mode: pixels(
            run(monkeypatch, "--model", "stylegan2", "--seeds", "0", "--noise-mode", mode, "--outdir", mode)[0]
        )
        for mode in ("const", "random", "none")
    }
    assert not np.array_equal(images["const"], images["none"])
    assert not np.array_equal(images["const"], images["random"])


def test_truncation_psi_zero_gives_every_seed_the_average_face(in_project, monkeypatch):
    full = run(monkeypatch, "--model", "stylegan2", "--seeds", "0-2", "--trunc", "1", "--outdir", "psi1")
    none = run(monkeypatch, "--model", "stylegan2", "--seeds", "0-2", "--trunc", "0", "--outdir", "psi0")
    assert not np.array_equal(pixels(full[0]), pixels(full[1]))
    assert np.array_equal(pixels(none[0]), pixels(none[1])) and np.array_equal(pixels(none[0]), pixels(none[2]))


def test_grid_tiles_the_seed_images_in_order(in_project, monkeypatch):
    singles = run(monkeypatch, "--model", "dcgan", "--seeds", "0-4", "--outdir", "single")
    (grid,) = run(monkeypatch, "--model", "dcgan", "--seeds", "0-4", "--walk", "grid", "--outdir", "grid")
    assert grid.name == "grid_seeds0-4.png"
    tiles = pixels(grid)
    assert tiles.shape == (2 * RES, 3 * RES, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    for i, single in enumerate(singles):
        row, col = divmod(i, 3)
        assert np.array_equal(tiles[row * RES : (row + 1) * RES, col * RES : (col + 1) * RES], pixels(single))
    assert not np.array_equal(pixels(singles[0]), pixels(singles[1]))
    assert not tiles[RES:, 2 * RES :].any()  # the sixth tile is empty


@pytest.mark.parametrize("model, rows_per_pair", [("stylegan2", 2), ("dcgan", 1)])
def test_strip_walks_between_consecutive_seeds(in_project, monkeypatch, model, rows_per_pair):
    args = ["--model", model, "--seeds", "1,4,2", "--walk", "strip", "--frames", "5", "--outdir", f"strip_{model}"]
    (strip,) = run(monkeypatch, *args)
    assert strip.name == "strip_seeds1_4_2.png"
    image = pixels(strip)
    assert image.shape == (2 * rows_per_pair * RES, 5 * RES, 3)  # 2 pairs of seeds, 5 frames each
    ends = run(monkeypatch, "--model", model, "--seeds", "1,4,2", "--outdir", f"ends_{model}")
    for row in range(0, 2 * rows_per_pair, rows_per_pair):  # the Z row of each pair
        pair = row // rows_per_pair
        first, last = image[row * RES : (row + 1) * RES, :RES], image[row * RES : (row + 1) * RES, -RES:]
        # slerp's end points equal the seeds' latents up to float rounding: a level of 8 bits at most
        assert np.abs(first.astype(int) - pixels(ends[pair])).max() <= 1
        assert np.abs(last.astype(int) - pixels(ends[pair + 1])).max() <= 1
    again = run(monkeypatch, *args[:-1], f"strip_{model}_again")
    assert again[0].read_bytes() == strip.read_bytes()


def test_gif_loops_through_the_seeds(in_project, monkeypatch):
    args = ["--model", "stylegan2", "--seeds", "0-2", "--walk", "gif", "--frames", "4"]
    (gif,) = run(monkeypatch, *args, "--outdir", "gif")
    assert gif.name == "walk_seeds0-2.gif"
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.size == (RES, RES)
        assert image.n_frames == 3 * 4  # 0 -> 1 -> 2 -> 0, 4 frames per pair
        assert image.info["loop"] == 0
    (again,) = run(monkeypatch, *args, "--outdir", "gif_again")
    assert again.read_bytes() == gif.read_bytes()


def test_other_runs_and_config_dirs(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing here: the run is found only through --runs-dir
    (written,) = run(monkeypatch, "--model", "dcgan", "--seeds", "3", "--runs-dir", str(project / "runs"))
    assert written == Path("out/dcgan/seed0003.png") and written.exists()


def error_line(monkeypatch, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize(
    "seeds, problem",
    [
        ("5-2", "the range 5-2 runs backwards (write 2-5)"),
        ("-3", "seeds are non-negative, got -3"),
        ("1,-3", "seeds are non-negative, got -3"),
        ("a-b", "'a-b' is not a seed or a range of seeds"),
        ("1.5", "'1.5' is not a seed"),
        ("", "a seed is empty"),
        ("1,,2", "a seed is empty"),
    ],
)
def test_bad_seeds_are_one_line_naming_the_syntax(in_project, monkeypatch, capsys, seeds, problem):
    line = error_line(monkeypatch, capsys, "--model", "stylegan2", f"--seeds={seeds}")
    assert problem in line and "write a range '0-7' (inclusive), a list '1,5,9'" in line


def test_an_unknown_model_lists_the_models_with_runs(in_project, monkeypatch, capsys):
    line = error_line(monkeypatch, capsys, "--model", "biggan")
    assert "unknown model 'biggan'" in line and line.endswith("models with runs: dcgan, stylegan2")


def test_a_model_without_a_run_names_how_to_train_it(in_project, monkeypatch, capsys):
    line = error_line(monkeypatch, capsys, "--model", "styleswin")
    assert "model 'styleswin' has no run" in line and TRAIN_HINT.format(m="styleswin") in line
    assert line.endswith("models with runs: dcgan, stylegan2")


@pytest.mark.parametrize(
    "model, why",
    [
        ("pggan", "was not trained in this experiment (not selected (model=stylegan2))"),
        ("stylegan", "G_ema.pt is missing"),
    ],
)
def test_an_untrained_model_names_how_to_train_it(in_project, monkeypatch, capsys, model, why):
    line = error_line(monkeypatch, capsys, "--model", model)
    assert why in line and TRAIN_HINT.format(m=model) in line


@pytest.mark.parametrize("psi", ["-0.1", "2.5", "nan"])
def test_psi_outside_zero_to_two_is_refused(in_project, monkeypatch, capsys, psi):
    line = error_line(monkeypatch, capsys, "--model", "stylegan2", "--trunc", psi)
    assert "the truncation psi must lie in [0, 2]" in line


def test_noise_mode_on_a_model_without_noise_is_refused(in_project, monkeypatch, capsys):
    line = error_line(monkeypatch, capsys, "--model", "dcgan", "--noise-mode", "random")
    assert "dcgan has no noise inputs" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0", "--walk", "strip"], "--walk strip walks between seeds: give at least two"),
        (["--walk", "gif", "--frames", "1"], "--frames 1: a walk needs at least 2 frames"),
        (["--walk", "video"], "argument --walk: invalid choice: 'video'"),
    ],
)
def test_bad_walk_options_are_one_line(in_project, monkeypatch, capsys, args, message):
    assert message in error_line(monkeypatch, capsys, "--model", "stylegan2", *args)


def test_missing_model_option_is_one_line(in_project, monkeypatch, capsys):
    assert "the following arguments are required: --model" in error_line(monkeypatch, capsys, "--seeds", "0")


def test_seeds_label_names_runs_of_seeds():
    assert generate.seeds_label([0, 1, 2, 3]) == "0-3"
    assert generate.seeds_label([1, 5, 9]) == "1_5_9"
    assert generate.seeds_label([0, 1, 2, 10]) == "0-2_10"
    assert generate.seeds_label(list(range(0, 200, 2))) == "0-198_100seeds"
