"""The comparison report: every number in its tables is the one in the metrics/stats files, labels are honest."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegan import handoff, stage_params
from facegan.params import load_params, model_names
from facegan.training.terms import D_ADVERSARIAL, G_ADVERSARIAL

MODEL_NAMES = model_names()
REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def span(low: float, high: float) -> handoff.Span:
    return handoff.Span(low=low, high=high)


# what two sets of 512 real faces score on the k-NN metrics (the reference stage's floor at num_gen)
REAL_VS_REAL_KNN = handoff.KnnFloor(
    k=3,
    splits=5,
    precision=span(0.62, 0.74),
    recall=span(0.55, 0.70),
    density=span(0.85, 1.1),
    coverage=span(0.8, 0.9),
    spread_ratio=span(0.95, 1.05),
)


def history(final_loss_d: float, ada: bool = False) -> list[handoff.HistoryRow]:
    return [
        handoff.HistoryRow(
            kimg=k,
            step=i + 1,
            train_seconds=100.0 * (i + 1),
            img_per_s=5.0,
            segment="train64",
            level=4,
            resolution=64,
            alpha=1.0,
            lr_g=0.002,
            lr_d=0.002,
            peak_memory_gib=None,
            augment_p=0.1 * i if ada else None,
            losses={D_ADVERSARIAL: ld, G_ADVERSARIAL: 1.0 + i},
        )
        for i, (k, ld) in enumerate([(2.0, 0.6), (4.0, 0.4), (6.0, final_loss_d)])
    ]


def stats(model: str, device: str, peak, final_loss_d: float, resolutions=(64,)) -> handoff.TrainedRun:
    return handoff.TrainedRun(
        status="trained",
        model=model,
        paper="p",
        resolution=64,
        resolutions_reached=list(resolutions),
        kimg=6.016,
        steps=188,
        batch_size=32,
        world_size=1,
        train_seconds=1234.5,
        img_per_s=4.87,
        device=device,
        device_name="x",
        precision="float32",
        peak_memory_bytes=peak,
        params_G=1_234_567,
        params_D=765_432,
        history=history(final_loss_d, ada=model == "stylegan2"),
        schedule=[],
        segments={},
        training_phases=["Dmain", "Gmain"],
        dvclive=False,
        kernel_fallbacks={"filtered_lrelu": "RuntimeError: no kernel"} if model == "stylegan2" else {},
        cache_fingerprint="0123456789abcdef",
        augment="ada" if model == "stylegan2" else "none",
        augment_p=0.2 if model == "stylegan2" else None,
        xflip=model != "dcgan",
        data_space="unit",
        ema_kimg=10.0,
        batchnorm="re-estimated" if model == "dcgan" else "none",
        stopped_by="kimg",
        budget_minutes=0.0,
    )


def metrics(
    model: str,
    label_key: str,
    fid_seeds: int,
    recall: float,
    lpips: str,
    space: str,
    *,
    fid: float | None = None,
    fid_inf: float | None = None,
    fid_start: float = 83.0,
    kid: float = 0.012345,
    precision: float = 0.6789,
    coverage: float = 0.7456,
    spread: float = 0.8,
) -> handoff.ModelMetrics:
    fids = [41.5 + 1.25 * i for i in range(fid_seeds)]
    dino = 310.5 - 2 * fid_seeds
    return handoff.ModelMetrics(
        status="trained",
        model=model,
        label_key=label_key,
        num_gen=512,
        num_ref=500,
        floor=handoff.Floor(n=512, fid=7.25, kid=0.0005, knn=REAL_VS_REAL_KNN),
        fid=handoff.FidResult(
            mean=float(np.mean(fids)) if fid is None else fid,
            std=float(np.std(fids, ddof=1)) if fid_seeds > 1 else 0.0,
            values=fids,
            sets=fid_seeds,
            start=fid_start,
            start_n=256,
            infinity=38.75 + 0.5 * fid_seeds if fid_inf is None else fid_inf,
            slope=1400.0,
            by_n={"256": 44.2, "384": 42.4, "512": 41.5},
        ),
        kid=handoff.KidResult(value=kid, by_n={"256": 0.0125, "384": 0.0124, "512": 0.012345}),
        fd_dinov2=handoff.DinoResult(
            mean=dino,
            std=3.25 if fid_seeds > 1 else 0.0,
            values=[dino] * fid_seeds,
            label_key="dinov2_stand_in",
            floor=handoff.Floor(n=512, fid=55.5, kid=0.001),
        ),
        knn=handoff.KnnResult(precision=precision, recall=recall, density=0.9123, coverage=coverage, num=500, k=3),
        feature_spread_ratio=spread,
        ppl=handoff.PplResult(
            value=123.456, num=64, space=space, sampling="end", epsilon=1e-4, crop=True, label_key=f"lpips_{lpips}"
        ),
        eval_seconds={},
        seeds={"fid": [1000 + i for i in range(fid_seeds)]},
    )


def curve(fids: list[float], num_gen: int) -> list[handoff.FidPoint]:
    return [
        handoff.FidPoint(
            kimg=2.0 * (i + 1), train_hours=0.03 * (i + 1), fid=f, num_gen=num_gen, label_key="proxy", resolution=64
        )
        for i, f in enumerate(fids)
    ]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """dcgan trained on CPU (healthy), stylegan2 on GPU with 3 FID seeds, a collapse and a kernel fallback,
    stylegan skipped, stylegan3 never run, pggan trained but not evaluated, styleswin evaluated with a rising
    FID curve after growing through two resolutions."""
    monkeypatch.chdir(tmp_path)
    runs = {
        "dcgan": stats("dcgan", "cpu", None, 0.5),
        "stylegan2": stats("stylegan2", "cuda:0", 3 * 2**30 + 123, 0.01),
        "styleswin": stats("styleswin", "cpu", None, 0.4, resolutions=(32, 64)),
        "pggan": stats("pggan", "cpu", None, 0.5),
        "stylegan": handoff.SkippedRun(status="skipped", model="stylegan", reason="params model=dcgan"),
    }
    evals = {
        "dcgan": (metrics("dcgan", "proxy", 1, 0.55, "proxy", "z"), curve([80.0, 60.0, 50.0], 256)),
        "stylegan2": (metrics("stylegan2", "proxy", 3, 0.02, "proxy", "w"), curve([70.0, 65.0], 256)),
        "styleswin": (metrics("styleswin", "proxy", 1, 0.4, "proxy", "w"), curve([50.0, 30.0, 45.0], 128)),
    }
    for name, st in runs.items():
        st.write(Path("runs", name, "train_stats.json"))
        if name in evals:
            m, c = evals[name]
            m.write(Path("evals", name, "metrics.json"))
            handoff.write_list(Path("evals", name, "fid_vs_kimg.json"), c)
            for pic in ("samples", "interpolation") + (("truncation",) if name != "dcgan" else ()):
                Image.new("RGB", (16, 16), (10, 20, 30)).save(Path("evals", name, f"{pic}.png"))
        elif isinstance(st, handoff.SkippedRun):
            handoff.SkippedMetrics(status="skipped", model=name, reason=st.reason).write(
                Path("evals", name, "metrics.json")
            )
    Image.new("RGB", (8, 8)).save(Path("evals", "styleswin", "res8.png"))
    Image.new("RGB", (8, 8)).save(Path("evals", "styleswin", "res16.png"))
    meta = handoff.ReferenceMeta(
        extractor="proxy",
        weights="",
        choice="",
        label_key="proxy",
        agreement=None,
        floors={"512": handoff.Floor(n=512, fid=7.25, kid=0.0005)},
        count=500,
        cache_count=512,
        cache_fingerprint="0123456789abcdef",
        source="synthetic",
        synthetic=True,
        resolution=64,
        chain=handoff.FeatureChain(
            crop="synthetic faces drawn aligned (no crop)",
            resolution=64,
            resize="torch bilinear with antialias to 75x75",
            extractor="proxy",
        ),
        dinov2=handoff.DinoReference(
            label_key="dinov2_stand_in",
            network="vit_small_patch14_dinov2 at 112 px",
            weights="",
            floors={"512": handoff.Floor(n=512, fid=55.5, kid=0.001)},
            count=500,
        ),
    )
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    view = stage_params.views(load_params(tmp_path / "params.yaml", overrides={"profile": "demo"}))["report"]
    return tmp_path, view, meta


def render(project) -> str:
    from facegan.report.render import render as render_report

    _, view, meta = project
    return render_report(view, meta, Path("reports"))


def table(text: str, first_column: str) -> list[dict]:
    """The markdown table whose header starts with `first_column`, as one dict per row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")])))
    return rows


def fid_numbers(m: dict) -> list[float]:
    """What an FID cell prints from evals/<model>/metrics.json: mean, std (several sets), n and sets."""
    fid = m["fid"]
    return [fid["mean"]] + ([fid["std"]] if fid["sets"] > 1 else []) + [m["num_gen"], fid["sets"]]


def expected_result_numbers(s: dict, m: dict) -> dict[str, list[float]]:
    return {
        "resolution": s["resolutions_reached"],
        "params G / D": [s["params_G"] / 1e6, s["params_D"] / 1e6],
        "kimg": [s["kimg"]],
        "train time": [s["train_seconds"] / 3600],
        "img/s": [s["img_per_s"]],
        "peak memory": [] if s["peak_memory_bytes"] is None else [s["peak_memory_bytes"] / 2**30],
        "FID": fid_numbers(m),
        "KID ×10³": [m["kid"]["value"] * 1e3, m["num_gen"]],
        "PPL": [m["ppl"]["value"]],
        "precision": [m["knn"]["precision"], m["knn"]["num"]],
        "recall": [m["knn"]["recall"], m["knn"]["num"]],
        "stability notes": [],
    }


def assert_numbers_match(cell: str, expected: list[float], where: str) -> None:
    printed = NUMBER.findall(cell)
    assert len(printed) == len(expected), f"{where}: {cell!r} vs {expected}"
    for text, value in zip(printed, expected):
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9, f"{where}: printed {text}, file says {value}"


def test_every_number_in_the_results_table_is_in_the_files(project):
    text = render(project)
    rows = {r["model"]: r for r in table(text, "model")}
    assert set(rows) == set(MODEL_NAMES)
    checked = 0
    for name, row in rows.items():
        if row["status"] != "trained":
            continue
        s = json.loads(Path("runs", name, "train_stats.json").read_text())
        m = json.loads(Path("evals", name, "metrics.json").read_text())
        for column, expected in expected_result_numbers(s, m).items():
            assert_numbers_match(row[column], expected, f"{name}/{column}")
            checked += len(expected)
    # three trained models (16 numbers each, sample counts included), plus stylegan2's FID std and GPU memory
    # and styleswin's second resolution
    assert checked == 3 * 16 + 3
    assert rows["styleswin"]["resolution"] == "32 → 64"


def test_the_report_leads_with_every_models_samples_then_the_ranking_with_spread_floor_and_start(project):
    text = render(project)
    picture, ranking, details = text.index("samples_overview.png"), text.index("## Ranking"), text.index("## Results")
    assert picture < ranking < details
    overview = Image.open(Path("reports/figures/samples_overview.png"))
    assert overview.height == 3 * 64  # one row per evaluated model
    rows = table(text[ranking:], "rank")
    assert [r["model"] for r in rows] == ["dcgan", "styleswin", "stylegan2"]  # FID 41.5, 41.5, 42.75: stable sort
    for row in rows:
        m = json.loads(Path("evals", row["model"], "metrics.json").read_text())
        fid, knn, dino = m["fid"], m["knn"], m["fd_dinov2"]
        assert_numbers_match(row["FID (n × sets)"], fid_numbers(m), row["model"])
        assert_numbers_match(row["real-vs-real floor"], [m["floor"]["fid"], m["floor"]["n"]], row["model"])
        assert_numbers_match(row["KID ×10³ (floor)"], [m["kid"]["value"] * 1e3, m["floor"]["kid"] * 1e3], row["model"])
        ratio = fid["start"] / fid["mean"]
        assert_numbers_match(
            row["FID at kimg 0 → final"], [fid["start"], fid["mean"], ratio, fid["start_n"]], row["model"]
        )
        sizes = [int(n) for n in fid["by_n"]]
        assert_numbers_match(row["FID∞ (n range)"], [fid["infinity"], min(sizes), max(sizes), len(sizes)], row["model"])
        assert_numbers_match(
            row["FD-DINOv2 (n × sets; floor)"],
            [
                dino["mean"],
                *([dino["std"]] if fid["sets"] > 1 else []),
                m["num_gen"],
                fid["sets"],
                dino["floor"]["fid"],
            ],
            row["model"],
        )
        assert "(stand-in)" in row["FD-DINOv2 (n × sets; floor)"]
        assert_numbers_match(
            row["density / coverage (n, k)"], [knn["density"], knn["coverage"], knn["num"], knn["k"]], row["model"]
        )
    assert "Not ranked: pggan, stylegan, stylegan3" in text
    assert "FD-DINOv2 uses a STAND-IN" in text  # the banner, as the proxy Inception's
    assert "- feature chain: synthetic faces drawn aligned (no crop) → 64x64 → torch bilinear" in text


def test_the_report_says_which_rankings_the_metrics_agree_on(project):
    """FID ranks dcgan = styleswin (41.5) above stylegan2; FD-DINOv2 (310.5 - 2 x sets) ranks stylegan2 first: the line
    says the distances disagree and gives each order, ties as '=', with its Kendall tau-b against FID's."""
    text = render(project)
    agreement = text[text.index("**What the metrics agree on**") :]
    assert "do not all rank the models alike" in agreement.splitlines()[0]
    assert "- FID: dcgan = styleswin > stylegan2 (Kendall τ with FID +1.00)" in agreement
    assert "- FD-DINOv2: stylegan2 > dcgan = styleswin (Kendall τ with FID -1.00)" in agreement
    # tied scores are no order: precision is 0.6789 for all three
    assert "- precision: dcgan = styleswin = stylegan2 (Kendall τ with FID undefined: ties leave no order)" in agreement


def test_the_agreement_lines_rank_precision_recall_and_coverage_higher_is_better_and_distances_lower():
    """A model whose samples land inside the real manifold more often is better on precision (Kynkaanniemi et
    al. 2019), whatever FID says; FID, KID and FID∞ rank the smaller distance first."""
    from facegan.report.render import agreement_text

    sharp = metrics(
        "sharp", "proxy", 1, 0.6, "proxy", "w", precision=0.8, coverage=0.9, fid=30.0, kid=0.01, fid_inf=28.0
    )
    blurry = metrics(
        "blurry", "proxy", 1, 0.3, "proxy", "w", precision=0.2, coverage=0.4, fid=60.0, kid=0.03, fid_inf=55.0
    )
    lines = agreement_text([blurry, sharp], ["blurry", "sharp"])
    for name in ("FID", "FID∞", "KID", "precision", "recall", "coverage"):
        assert f"- {name}: sharp > blurry (Kendall τ with FID +1.00)" in lines, name


def test_kernel_fallbacks_are_shown(project):
    text = render(project)
    assert "**kernel fallback** in stylegan2: `filtered_lrelu` ran on the PyTorch reference" in text


def test_a_stats_file_of_another_shape_stops_the_report(project):
    """The bug declared shapes exist for: a renamed key must fail, not fall back to a default."""
    from facegan.errors import UserError

    path = Path("runs", "dcgan", "train_stats.json")
    stats_dict = json.loads(path.read_text())
    stats_dict["resolution_reached"] = stats_dict.pop("resolutions_reached")
    path.write_text(json.dumps(stats_dict))
    with pytest.raises(
        UserError,
        match=r"train_stats.json does not have the shape of TrainedRun \(missing "
        r"resolutions_reached; unknown resolution_reached\)",
    ):
        render(project)


def test_a_metrics_file_of_the_flat_layout_stops_the_report_naming_evaluate(project):
    """evals/<model>/metrics.json holds one section per metric; a file of the earlier flat layout (precision,
    recall, ... at the top) is refused naming the stage that writes it again, never read half."""
    from facegan.errors import UserError

    path = Path("evals", "dcgan", "metrics.json")
    flat = json.loads(path.read_text())
    flat.update(flat.pop("knn"))  # precision, recall, density, coverage, num, k at the top, as before
    path.write_text(json.dumps(flat))
    with pytest.raises(UserError, match=r"ModelMetrics \(missing knn; unknown coverage, density, k, num, precision, "):
        render(project)
    with pytest.raises(UserError, match=r"re-run `dvc repro evaluate-<model>`$"):
        render(project)


def test_the_dvc_exp_show_columns_keep_their_flat_names_and_rounding(tmp_path):
    """metrics/<model>.json is what `dvc exp show` and `dvc metrics diff` compare across experiments: its keys
    stay flat whatever the full file's layout, each rounded as before."""
    m = metrics("dcgan", "proxy", 3, 0.55, "proxy", "z")
    summary = handoff.ModelSummary.of(m, stats("dcgan", "cpu", None, 0.5)).to_dict()
    assert summary == {
        "fid": round(m.fid.mean, 4),
        "fid_std": round(m.fid.std, 4),
        "fid_inf": round(m.fid.infinity, 4),
        "kid": round(m.kid.value, 6),
        "fd_dinov2": round(m.fd_dinov2.mean, 4),
        "precision": 0.6789,
        "recall": 0.55,
        "density": 0.9123,
        "coverage": 0.7456,
        "ppl": 123.456,
        "kimg": 6.016,
        "train_hours": round(1234.5 / 3600, 4),
    }
    off = m.model_copy(update={"fd_dinov2": None})  # evaluate.dinov2 none
    assert handoff.ModelSummary.of(off, stats("dcgan", "cpu", None, 0.5)).fd_dinov2 is None


def test_every_sample_count_is_in_the_files(project):
    text = render(project)
    rows = table(text, "model")  # the results table comes first; the counts table is the next one
    counts = table(text[text.index("### Sample counts") :], "model")
    assert {r["model"] for r in counts} == {"dcgan", "stylegan2", "styleswin"}
    assert len(rows) == len(MODEL_NAMES)  # every model of params.yaml, run or not
    for row in counts:
        m = json.loads(Path("evals", row["model"], "metrics.json").read_text())
        c = json.loads(Path("evals", row["model"], "fid_vs_kimg.json").read_text())
        expected = {
            "generated (FID/KID)": [m["num_gen"]],
            "generated sets": [m["fid"]["sets"]],
            "reference": [m["num_ref"]],
            "P&R per set": [m["knn"]["num"]],
            "PPL pairs": [m["ppl"]["num"]],
            "FID-vs-kimg points": [len(c)],
            "images per point": sorted({p["num_gen"] for p in c}),
        }
        for column, values in expected.items():
            assert_numbers_match(row[column], values, f"{row['model']}/{column}")


def test_proxy_numbers_are_labelled_in_every_cell_and_plot_title(project):
    text = render(project)
    for row in table(text, "model"):
        if row["status"] == "trained":
            for column in ("FID", "KID ×10³", "precision", "recall", "PPL"):
                assert row[column].endswith("(proxy)"), (row["model"], column, row[column])
    assert "## proxy FID (random Inception, not FID) vs kimg" in text
    assert "## proxy FID (random Inception, not FID) vs training time" in text
    assert "PROXY extractor" in text and "PROXY LPIPS" in text and "synthetic stand-in" in text


def test_rows_for_models_without_results_say_why(project):
    rows = {r["model"]: r for r in table(render(project), "model")}
    assert rows["pggan"]["status"] == "not run: evaluate stage not run"
    assert rows["stylegan"]["status"] == "skipped: params model=dcgan"
    assert rows["stylegan3"]["status"] == "not run: train stage not run"
    assert all(rows["pggan"][c] == "–" for c in ("FID", "PPL", "kimg"))


def test_stability_notes_flag_collapse_and_late_divergence_only_where_present(project):
    rows = {r["model"]: r for r in table(render(project), "model")}
    assert rows["dcgan"]["stability notes"] == "none detected"
    # stylegan2: recall 0.02 below the real-vs-real 0.55-0.70 with precision inside it; D's loss fell below 0.1
    # only on its last logged row of three (0.6, 0.4, 0.01): one batch, no claim
    assert rows["stylegan2"]["stability notes"] == (
        "D loss near zero only at the last log rows: too few rows to tell; low recall (possible mode collapse)"
    )
    assert "FID worsened" in rows["styleswin"]["stability notes"]


def notes_of(recall: float = 0.5, precision: float = 0.6789, spread: float = 0.8, d_losses=(), fids=()) -> str:
    """The stability notes of one row: its metrics against the fixture's real-vs-real floors."""
    from facegan.report.render import Row, stability_notes

    run = stats("stylegan2", "cpu", None, 0.5)
    if d_losses:
        run = run.model_copy(
            update={
                "history": [h.model_copy(update={"losses": {D_ADVERSARIAL: v}}) for h, v in zip(run.history, d_losses)]
            }
        )
    m = metrics("stylegan2", "proxy", 1, recall, "proxy", "w", precision=precision, spread=spread)
    floors = {"64": handoff.Floor(n=64, fid=12.0, kid=0.001), "512": m.floor}
    return stability_notes(Row("stylegan2", run, m, curve(list(fids), 64)), "ns", floors)


def test_a_collapse_is_claimed_only_below_what_real_faces_score_at_that_n():
    assert notes_of(recall=0.02) == "low recall (possible mode collapse)"
    # at n=64 two real sets can share little: recall 0.05 inside a real-vs-real range of 0.0-0.3 proves nothing
    tiny = metrics("x", "proxy", 1, 0.5, "proxy", "w").floor.knn.model_copy(update={"recall": span(0.0, 0.3)})
    from facegan.report.render import Row, stability_notes

    m = metrics("x", "proxy", 1, 0.05, "proxy", "w")
    m = m.model_copy(update={"floor": m.floor.model_copy(update={"n": 64, "knn": tiny})})
    assert stability_notes(Row("x", stats("x", "cpu", None, 0.5), m, []), "ns", {}) == (
        "low recall, inside the real-vs-real range at n=64: too small to tell"
    )
    # the demo's 0.000 / 0.000: samples unlike any face are not a collapse
    assert notes_of(recall=0.0, precision=0.0) == (
        "precision and recall below the real-vs-real range (samples unlike the data, not collapse)"
    )
    assert notes_of(spread=0.1) == "low feature spread (possible mode collapse)"
    # a floor written before the k-NN ranges existed: no claim, and how to get one
    old = metrics("x", "proxy", 1, 0.02, "proxy", "w")
    old = old.model_copy(update={"floor": old.floor.model_copy(update={"knn": None})})
    assert "no real-vs-real range to judge it" in stability_notes(Row("x", stats("x", "cpu", None, 0.5), old, []), "ns")


def test_d_overpowering_needs_the_last_three_logged_rows_near_zero():
    assert notes_of(d_losses=(0.05, 0.02, 0.01)) == "D overpowers G (D loss near zero)"
    assert notes_of(d_losses=(0.6, 0.4, 0.01)) == "D loss near zero only at the last log rows: too few rows to tell"
    assert notes_of(d_losses=(0.6, 0.4, 0.3)) == "none detected"


def test_a_late_fid_rise_is_instability_only_when_larger_than_the_floor_at_the_snapshots_n():
    assert notes_of(fids=(50.0, 30.0, 45.0)) == "FID worsened after its best snapshot"  # +15 beside a floor of 12
    assert notes_of(fids=(50.0, 30.0, 40.0)) == (  # +10: two real sets of 64 differ by 12
        "FID rose after its best snapshot by less than the real-vs-real floor at n=64: too small to tell"
    )


def test_report_shows_plots_and_each_models_pictures(project):
    text = render(project)
    figures = Path("reports/figures")
    for name in ("fid_vs_kimg", "fid_vs_time", "losses"):
        assert (figures / f"{name}.png").stat().st_size > 1000 and f"(figures/{name}.png)" in text
    assert (figures / "stylegan2_truncation.png").exists() and not (figures / "dcgan_truncation.png").exists()
    for model in ("dcgan", "stylegan2", "styleswin"):
        assert f"(figures/{model}_samples.png)" in text and f"(figures/{model}_interpolation.png)" in text
    assert text.index("styleswin_res8.png") < text.index("styleswin_res16.png")  # growth order


def test_growing_model_is_judged_on_its_final_resolution_snapshots():
    from facegan.report.render import Row, stability_notes

    def row(points):
        return Row(
            "pggan",
            None,
            None,
            [
                handoff.FidPoint(kimg=i, train_hours=None, fid=f, num_gen=8, label_key="proxy", resolution=r)
                for i, (r, f) in enumerate(points)
            ],
        )

    # low-resolution snapshots score low on a coarse extractor; they are no "best" a 64x64 run fell from
    growing = [(4, 5.0), (8, 9.0), (16, 20.0), (64, 40.0), (64, 35.0), (64, 36.0)]
    assert stability_notes(row(growing), "wgan_gp") == "none detected"
    assert "FID worsened" in stability_notes(row(growing[:3] + [(64, 20.0), (64, 30.0), (64, 36.0)]), "wgan_gp")


def test_models_are_compared_at_equal_training_time_from_measured_snapshots_only():
    """The table reads every model's FID-vs-time snapshots at the shortest run's total time: a snapshot taken
    then, or the line between the two around it, never a line from the untrained start (the demo keeps only
    the kimg-0 and the final snapshot, and used to show kimg 0's FID for six models of seven)."""
    from facegan.report.render import Row, equal_time_section

    def row(name, hours, fids):
        points = [
            handoff.FidPoint(kimg=4.0 * i, train_hours=h, fid=f, num_gen=8, label_key="proxy", resolution=64)
            for i, (h, f) in enumerate(zip(hours, fids))
        ]
        run = stats(name, "cpu", None, 0.5).model_copy(update={"train_seconds": hours[-1] * 3600})
        return Row(name, run, metrics(name, "proxy", 1, 0.5, "proxy", "w"), points)

    text = equal_time_section(
        [
            row("slow", [0.0, 1.0, 2.0, 3.0], [90.0, 60.0, 40.0, 30.0]),
            row("fast", [0.0, 0.5, 1.5], [80.0, 50.0, 45.0]),
            row("sparse", [0.0, 2.5], [300.0, 100.0]),
        ]
    )
    assert "## At equal training time (1.500 h, the shortest run)" in text
    cells = {r["model"]: r for r in _table(text)}
    assert cells["slow"]["FID at the common time"] == "50.00 (proxy), interpolated"  # halfway from 60 to 40
    assert cells["slow"]["from snapshots (kimg)"] == "4 – 8" and cells["slow"]["their hours"] == "1.000 – 2.000"
    assert cells["fast"]["FID at the common time"] == "45.00 (proxy)" and cells["fast"]["their hours"] == "1.500"
    assert cells["sparse"]["FID at the common time"] == "– (too few snapshots to interpolate: kimg 0, 4)"
    assert "sparse: too few snapshots around that time; a lower `train.snapshot_kimg`" in text


def _table(text: str) -> list[dict]:
    return table(text, "model")


def test_a_model_that_got_worse_than_its_untrained_start_is_not_said_to_improve():
    from facegan.report.render import improvement

    better = metrics("dcgan", "fid_helper", 2, 0.5, "proxy", "z")  # FID 42.125 against 83.0 at kimg 0
    assert improvement(better) == "83.00 → 42.12: 1.97× lower (start n=256)"
    worse = metrics("stylegan2", "fid_helper", 1, 0.5, "proxy", "w", fid_start=40.0)
    # the demo's StyleGAN2 went 311.74 -> 314.25, which the report called "1.0× lower"
    assert improvement(worse) == "40.00 → 41.50: 1.04× higher, no improvement (start n=256)"


def test_the_report_shows_each_models_recipe_and_adas_p_beside_the_fid_curve(project):
    """Precision, D's units, augmentation with its final p, flips, EMA and how DCGAN's G_ema samples, from the stats;
    ADA's p over kimg in the FID-vs-kimg figure."""
    text = render(project)
    recipe = text[text.index("## Training recipe") :]
    rows = {r["model"]: r for r in table(recipe, "model")}
    assert rows["stylegan2"]["augmentation"] == "ADA ada, p 0.200 at the end"
    assert rows["dcgan"]["x-flips"] == "no" and rows["styleswin"]["x-flips"] == "yes"
    assert rows["dcgan"]["sampling"].startswith("G_ema's BatchNorm statistics re-estimated")
    assert "vs kimg and ADA's p" in text
    assert Image.open(Path("reports/figures/fid_vs_kimg.png")).width == 12 * 120  # two panels: FID, then p
