"""Every self-consuming loop of a dataset side by side: the configurations (a loop's run name
without its seed) found in <data-dir>/results/<ds>_loop*_metrics.json, drawn as mean ± sd over
their seeds against the generation (FID with its floor, class consistency, within-class variance,
precision, recall, Vendi), and tabled at the generations of --marks.

Writes data/visualizations/<ds>_loops_metrics.png and data/results/<ds>_loops_comparison.md.

    python compare_loops.py --dataset digits --marks 0,2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataio.artifacts import ensure_output_dir, write_text
from dataio.data_sources import resolve_dataset
from reporting.figures import save_and_close
from reporting.loop_comparison import comparison_table, loop_results, metrics_figure
from runtime.settings import configure, pick
from runtime.stage import StageError, run_stage

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # loops' dataset [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # where self_consuming_loop.py wrote results/ (figure and table go there too)
MARKS = (0, 5, 10, 20)  # generations shown in the table (those a loop reached) [>= 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class Comparison:
    """Which loops are compared and where the report goes."""

    dataset: str
    data_dir: str
    marks: tuple[int, ...]


def main(argv: list[str] | None = None) -> None:
    c = pick(Comparison, resolve_dataset(configure(globals(), argv)))
    results = Path(c.data_dir) / "results"
    runs, notes = loop_results(results, c.dataset)
    for note in notes:
        print(f"warning: {note}")
    if not runs:
        raise StageError(f"{results}: no loop results of {c.dataset} ({c.dataset}_loop*_"
                         f"metrics.json); run self_consuming_loop.py --dataset {c.dataset} first")
    reached = {int(r["generation"]) for records in runs.values() for r in records}
    marks = sorted(m for m in set(c.marks) if m in reached)
    table = comparison_table(runs, marks)
    text = (f"# Self-consuming loops of {c.dataset}\n\n{len(runs)} loop(s) from {results}: mean "
            f"± sd over each configuration's seeds (evaluator-CNN features; the floors are in "
            f"each loop's own table).\n\n{table}\n")
    print(text)
    figure = metrics_figure(runs, f"{c.dataset}: every self-consuming loop")
    png = save_and_close(figure, ensure_output_dir(Path(c.data_dir) / "visualizations")
                         / f"{c.dataset}_loops_metrics.png")
    md = write_text(results / f"{c.dataset}_loops_comparison.md", text)
    print(f"wrote {png}, {md}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
