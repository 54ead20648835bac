"""The comparison report: every number in its tables is the one in the metrics/stats files, labels are honest."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegan.params import MODEL_NAMES, load_params

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def history(final_loss_d: float) -> list[dict]:
    return [{"kimg": k, "step": i + 1, "train_seconds": 100.0 * (i + 1), "loss_D": ld, "loss_G": 1.0 + i, "r1": 0.0, "pl": 0.0}
            for i, (k, ld) in enumerate([(2.0, 0.6), (4.0, 0.4), (6.0, final_loss_d)])]


def stats(model: str, device: str, peak, final_loss_d: float) -> dict:
    return {"status": "trained", "model": model, "resolution": 64, "kimg": 6.016, "steps": 188, "batch_size": 32,
            "train_seconds": 1234.5, "img_per_s": 4.87, "device": device, "precision": "float32",
            "peak_memory_bytes": peak, "params_G": 1_234_567, "params_D": 765_432, "history": history(final_loss_d)}


def metrics(extractor: str, fid_seeds: int, recall: float, ppl_lpips: str, space: str) -> dict:
    fids = [41.5 + 1.25 * i for i in range(fid_seeds)]
    return {"status": "trained", "extractor": extractor, "label_key": extractor, "label": "x", "fid": float(np.mean(fids)),
            "fid_std": float(np.std(fids, ddof=1)) if fid_seeds > 1 else 0.0, "fid_values": fids, "fid_seeds": fid_seeds,
            "kid": 0.012345, "num_gen": 512, "num_ref": 500, "precision": 0.6789, "recall": recall, "pr_num": 500, "pr_k": 3,
            "feature_spread_ratio": 0.8, "ppl": 123.456, "ppl_num": 64, "ppl_space": space, "ppl_sampling": "end",
            "ppl_epsilon": 1e-4, "ppl_crop": True, "ppl_lpips": ppl_lpips, "ppl_label": "proxy PPL",
            "seeds": {"fid": [1000 + i for i in range(fid_seeds)], "snapshots": 2000, "ppl": 3000, "pictures": 4000}}


def curve(fids: list[float], num_gen: int) -> list[dict]:
    return [{"kimg": 2.0 * (i + 1), "train_hours": 0.03 * (i + 1), "fid": f, "num_gen": num_gen, "extractor": "proxy"}
            for i, f in enumerate(fids)]


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """dcgan trained on CPU (healthy), stylegan2 on GPU with 3 FID seeds and a collapse, pggan not implemented,
    stylegan skipped, stylegan3 never run, styleswin evaluated with a rising FID curve."""
    monkeypatch.chdir(tmp_path)
    runs = {"dcgan": stats("dcgan", "cpu", None, 0.5), "stylegan2": stats("stylegan2", "cuda:0", 3 * 2**30 + 123, 0.01),
            "styleswin": stats("styleswin", "cpu", None, 0.4),
            "pggan": {"status": "not_implemented", "reason": "model 'pggan' is not implemented yet"},
            "stylegan": {"status": "skipped", "reason": "params model=dcgan"}}
    evals = {"dcgan": (metrics("proxy", 1, 0.55, "proxy", "z"), curve([80.0, 60.0, 50.0], 256)),
             "stylegan2": (metrics("proxy", 3, 0.02, "proxy", "w"), curve([70.0, 65.0], 256)),
             "styleswin": (metrics("proxy", 1, 0.4, "proxy", "w"), curve([50.0, 30.0, 45.0], 128))}
    for name, st in runs.items():
        write(Path("runs", name, "train_stats.json"), st)
        if name in evals:
            m, c = evals[name]
            write(Path("metrics", f"{name}.json"), m)
            write(Path("evals", name, "fid_vs_kimg.json"), c)
            for pic in ("samples", "interpolation") + (("truncation",) if name != "dcgan" else ()):
                Image.new("RGB", (16, 16), (10, 20, 30)).save(Path("evals", name, f"{pic}.png"))
        else:
            write(Path("metrics", f"{name}.json"), {"status": st["status"], "reason": st["reason"]})
    Image.new("RGB", (8, 8)).save(Path("evals", "styleswin", "res8.png"))
    Image.new("RGB", (8, 8)).save(Path("evals", "styleswin", "res16.png"))
    meta = {"extractor": "proxy", "label_key": "proxy", "label": "proxy FID (random Inception, not comparable)",
            "count": 500, "cache_count": 512, "source": "synthetic", "synthetic": True, "resolution": 64, "agreement": None}
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    params = load_params(tmp_path / "params.yaml", overrides={"profile": "demo"})
    return tmp_path, params, meta


def render(project) -> str:
    from facegan.report.render import render as render_report

    _, params, meta = project
    return render_report(params, meta, Path("reports"))


def table(text: str, first_column: str) -> list[dict]:
    """The markdown table whose header starts with `first_column`, as one dict per row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")])))
    return rows


def expected_result_numbers(s: dict, m: dict) -> dict[str, list[float]]:
    return {
        "resolution": [s["resolution"]], "params G / D": [s["params_G"] / 1e6, s["params_D"] / 1e6], "kimg": [s["kimg"]],
        "train time": [s["train_seconds"] / 3600], "img/s": [s["img_per_s"]],
        "peak memory": [] if s["peak_memory_bytes"] is None else [s["peak_memory_bytes"] / 2**30],
        "FID": [m["fid"]] + ([m["fid_std"]] if m["fid_seeds"] > 1 else []), "KID ×10³": [m["kid"] * 1e3],
        "PPL": [m["ppl"]], "precision": [m["precision"]], "recall": [m["recall"]], "stability notes": [],
    }


def assert_numbers_match(cell: str, expected: list[float], where: str) -> None:
    printed = NUMBER.findall(cell)
    assert len(printed) == len(expected), f"{where}: {cell!r} vs {expected}"
    for text, value in zip(printed, expected):
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9, f"{where}: printed {text}, file says {value}"


def test_every_number_in_the_results_table_is_in_the_files(project):
    text = render(project)
    rows = {r["model"]: r for r in table(text, "model")}
    assert set(rows) == set(MODEL_NAMES)
    checked = 0
    for name, row in rows.items():
        if row["status"] != "trained":
            continue
        s = json.loads(Path("runs", name, "train_stats.json").read_text())
        m = json.loads(Path("metrics", f"{name}.json").read_text())
        for column, expected in expected_result_numbers(s, m).items():
            assert_numbers_match(row[column], expected, f"{name}/{column}")
            checked += len(expected)
    assert checked == 3 * 11 + 2  # three trained models, plus stylegan2's FID std and GPU memory


def test_every_sample_count_is_in_the_files(project):
    text = render(project)
    rows = table(text, "model")  # the results table comes first; the counts table is the next one
    counts = table(text[text.index("### Sample counts"):], "model")
    assert {r["model"] for r in counts} == {"dcgan", "stylegan2", "styleswin"} and len(rows) == 6
    for row in counts:
        m = json.loads(Path("metrics", f"{row['model']}.json").read_text())
        c = json.loads(Path("evals", row["model"], "fid_vs_kimg.json").read_text())
        expected = {"generated (FID/KID)": [m["num_gen"]], "generated sets": [m["fid_seeds"]], "reference": [m["num_ref"]],
                    "P&R per set": [m["pr_num"]], "PPL pairs": [m["ppl_num"]], "FID-vs-kimg points": [len(c)],
                    "images per point": sorted({p["num_gen"] for p in c})}
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
    assert rows["pggan"]["status"].startswith("not implemented yet")
    assert rows["stylegan"]["status"].startswith("skipped")
    assert rows["stylegan3"]["status"].startswith("not run")
    assert all(rows["pggan"][c] == "–" for c in ("FID", "PPL", "kimg"))


def test_stability_notes_flag_collapse_and_late_divergence_only_where_present(project):
    rows = {r["model"]: r for r in table(render(project), "model")}
    assert rows["dcgan"]["stability notes"] == "none detected"
    assert "mode collapse" in rows["stylegan2"]["stability notes"] and "D overpowers G" in rows["stylegan2"]["stability notes"]
    assert "FID worsened" in rows["styleswin"]["stability notes"]


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
    from facegan.report.render import stability_notes

    def row(points):
        return {"stats": {"history": []}, "metrics": {},
                "curve": [{"kimg": i, "fid": f, "resolution": r} for i, (r, f) in enumerate(points)]}

    # low-resolution snapshots score low on a coarse extractor; they are no "best" a 64x64 run fell from
    growing = [(4, 5.0), (8, 9.0), (16, 20.0), (64, 40.0), (64, 35.0), (64, 36.0)]
    assert stability_notes(row(growing), "wgan_gp") == "none detected"
    assert "FID worsened" in stability_notes(row(growing[:3] + [(64, 20.0), (64, 30.0), (64, 36.0)]), "wgan_gp")
