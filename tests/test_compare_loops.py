"""compare_loops.py and reporting/loop_comparison.py on results files written in the format of
self_consuming_loop.py: configurations are grouped over seeds, the table's mean ± sd equals a
hand computation, an unreadable file is left out with a note, and no results stop the script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import compare_loops
from reporting.loop_comparison import banded, config_of, run_label
from runtime.stage import StageError

KEYS = ("fid", "fid_floor", "class_consistency", "class_consistency_real", "within_class_spread",
        "precision", "precision_floor", "recall", "recall_floor", "vendi", "vendi_real")


def write_loop(results: Path, name: str, fids: list[float]) -> None:
    records = [{"generation": g, **{k: 0.5 for k in KEYS}, "fid": fid}
               for g, fid in enumerate(fids)]
    (results / f"{name}_metrics.json").write_text(json.dumps(
        {"loop_settings": {}, "generations": records, "meta": "{}"}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    write_loop(folder, "digits_loop", [10.0, 20.0, 40.0])
    write_loop(folder, "digits_loop_seed1", [12.0, 24.0])  # reached generation 1 only
    write_loop(folder, "digits_loop_accumulate_fresh20", [10.0, 11.0, 12.0])
    return folder


def test_names_group_seeds_and_read_as_labels():
    assert config_of("digits_loop_accsub_fresh20_seed2") == "digits_loop_accsub_fresh20"
    assert config_of("digits_loop_trunc0.5") == "digits_loop_trunc0.5"
    assert run_label("digits_loop_accsub_fresh20") == "accumulate-subsample, 20% fresh"
    assert run_label("digits_loop_scratch") == "replace, from scratch"
    assert run_label("digits_loop_accumulate_fresh20_sd_full") == \
        "Stable Diffusion (whole UNet): accumulate, 20% fresh"
    assert run_label("digits_loop_sd") == "Stable Diffusion (LoRA): replace"
    assert config_of("digits_loop_accumulate@wide_seed2") == "digits_loop_accumulate@wide"
    assert run_label("digits_loop_accumulate@wide") == "accumulate @wide"
    assert run_label("digits_loop_fresh20_sd@lr-3") == \
        "Stable Diffusion (LoRA): replace, 20% fresh @lr-3"


def test_the_bands_are_the_mean_and_sd_over_the_seeds_at_generations_all_reached(results):
    runs = {p.name.removesuffix("_metrics.json"): json.loads(p.read_text())["generations"]
            for p in results.glob("*.json")}
    generations, mean, sd, seeds = banded(runs, "fid")["digits_loop"]
    assert list(generations) == [0, 1] and seeds == 2
    np.testing.assert_allclose(mean, [11.0, 22.0])
    np.testing.assert_allclose(sd, [np.std([10, 12], ddof=1), np.std([20, 24], ddof=1)])


def test_the_script_writes_the_table_and_figure_and_names_a_broken_file(results, capsys):
    (results / "digits_loop_scratch_metrics.json").write_text("{not json")
    compare_loops.main(["--dataset", "digits", "--data-dir", str(results.parent),
                        "--marks", "0,1,2,7"])
    out = capsys.readouterr().out
    assert "digits_loop_scratch_metrics.json is not readable as loop results" in out
    table = (results / "digits_loops_comparison.md").read_text()
    assert "| gen 0 | gen 1 | gen 2 |" in table and "gen 7" not in table
    assert f"| replace | 2 | FID | 11 ± {np.std([10, 12], ddof=1):.2g} | 22 ± " in table
    assert "| accumulate, 20% fresh | 1 | FID | 10 ± 0 | 11 ± 0 | 12 ± 0 |" in table
    assert (results.parent / "visualizations" / "digits_loops_metrics.png").stat().st_size > 0


def test_no_loop_results_stop_in_one_line(tmp_path):
    with pytest.raises(StageError, match="no loop results of digits"):
        compare_loops.main(["--dataset", "digits", "--data-dir", str(tmp_path)])
