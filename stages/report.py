"""Stage `report`: reports/comparison.md and its figures, from the metrics files alone."""
from __future__ import annotations

from facegan import paths
from facegan.errors import stage_main
from facegan.io import read_json
from facegan.params import load_params
from facegan.report.render import render


@stage_main
def main() -> None:
    params = load_params()
    render(params, read_json(paths.REFERENCE_DIR / "meta.json"))
    print(f"wrote {paths.REPORTS_DIR / 'comparison.md'}")


if __name__ == "__main__":
    main()
