"""Stage `report`: reports/comparison.md and its figures, from the metrics files alone."""

from __future__ import annotations

from facegan import handoff, paths, stage_params
from facegan.errors import stage_main
from facegan.report.render import render
from stages import start_stage


@stage_main(exclusive=True, resumable=False)
def main() -> None:
    start_stage()
    view = stage_params.load("report")
    render(view, handoff.ReferenceMeta.read(paths.REFERENCE_DIR / "meta.json"))
    print(f"wrote {paths.REPORTS_DIR / 'comparison.md'}")


if __name__ == "__main__":
    main()
