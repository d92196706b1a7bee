"""demo_report.py as `make demo` runs it, after evaluate.py, on digits files with known answers.

Generated files that copy the real test set must be reported as working (Fréchet distance 0,
full precision, the evaluator's own class consistency); uniform noise must be reported as not
meeting its bar; the loop and CLIP rows come from their stages' JSON files; the three pictures
are the ones evaluate.py and the loop write.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from script_runner import run_script
from sklearn.decomposition import PCA

from dataio.artifacts import make_meta, save_npz
from dataio.data_sources import load_dataset

FAST = ["--device", "cpu", "--evaluator-epochs", "4", "--plot-points", "200", "--kmeans-init", "2",
        "--silhouette-samples", "300", "--baseline-components", "8", "--bootstrap", "0",
        "--kid-subsets", "5", "--cas-epochs", "2"]


def build(root: Path, loop_fid: float) -> None:
    data = load_dataset("digits")
    meta = make_meta("tests/test_demo_report.py", {}, "digits", 0)
    pixels_train = data.x_train.reshape(len(data.x_train), -1) / 255.0
    pixels_test = data.x_test.reshape(len(data.x_test), -1) / 255.0
    pca = PCA(n_components=12, random_state=0).fit(pixels_train)
    z_train = pca.transform(pixels_train).astype(np.float32)
    z_test = pca.transform(pixels_test).astype(np.float32)
    emb, rng = root / "embeddings", np.random.default_rng(0)
    save_npz(emb / "digits_pca12.npz", {"z_train": z_train, "y_train": data.y_train,
                                        "z_test": z_test, "y_test": data.y_test}, meta)
    save_npz(emb / "digits_pca12_copy.gen.npz", {"z_gen": z_test, "y_gen": data.y_test}, meta)
    noise = (rng.standard_normal(z_test.shape) * 10).astype(np.float32)
    save_npz(emb / "digits_pca12_noise.gen.npz", {"z_gen": noise, "y_gen": data.y_test}, meta)
    collapsed = np.repeat(z_test[:1], len(z_test), axis=0)  # every sample one real test row
    save_npz(emb / "digits_pca12_collapsed.gen.npz", {"z_gen": collapsed, "y_gen": data.y_test},
             meta)
    everything = np.arange(len(data.x_test))
    noise_images = rng.integers(0, 256, data.x_test.shape, dtype=np.uint8)
    plan1 = root / "samples" / "plan1"
    save_npz(plan1 / "digits_pca12_copy.npz",
             {"x_gen": data.x_test, "idx_src": everything, "y_src": data.y_test}, meta)
    save_npz(plan1 / "digits_pca12_noise.npz",
             {"x_gen": noise_images, "idx_src": everything, "y_src": data.y_test}, meta)
    save_npz(root / "samples" / "plan2" / "digits_pca12_copy.npz",
             {"x_gen": data.x_test, "y_gen": data.y_test}, meta)
    results = root / "results"
    results.mkdir(parents=True)
    generations = [{"generation": 0, "fid": loop_fid, "fid_floor": 3.0, "recall": 0.7},
                   {"generation": 2, "fid": 80.0, "fid_floor": 3.0, "recall": 0.2}]
    (results / "digits_loop_metrics.json").write_text(json.dumps({"generations": generations}))
    figures = root / "visualizations"
    figures.mkdir(parents=True)
    (figures / "digits_loop_metrics.png").write_bytes(b"the loop's figure")
    (results / "clip_digits_zero_shot.json").write_text(json.dumps({"zero_shot_accuracy": 0.9}))


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    """The script run in this process as the shell runs it (tests/script_runner.py)."""
    return run_script(script, *args)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("demo")
    build(root, loop_fid=12.0)
    evaluated = run("evaluate.py", "--data-dir", str(root), *FAST)
    assert evaluated.returncode == 0, evaluated.stderr
    result = run("demo_report.py", "--dataset", "digits", "--data-dir", str(root))
    assert result.returncode == 0, result.stderr
    text = (root / "results" / "demo_report.md").read_text()
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    return {"root": str(root), "text": text, "stdout": result.stdout, "rows": rows}


def test_copies_work_and_noise_does_not(report) -> None:
    rows = report["rows"]
    assert "| works |" in rows[("Plan 1", "pca12_copy")]  # the lower FID of the two is shown
    assert ("Plan 1", "pca12_noise") not in rows
    assert "precision 1.000" in rows[("Plan 2", "pca12_copy")]
    assert rows[("Plan 2", "pca12_copy")].endswith("| works |")
    assert "does not meet its bar" in rows[("Plan 2", "pca12_noise")]
    # Collapsed onto one real row: precision 1.000 beats the mixture, recall 0.000 does not
    # meet the bar, so it is not called working.
    assert "precision 1.000, recall 0.00" in rows[("Plan 2", "pca12_collapsed")]
    assert "does not meet its bar" in rows[("Plan 2", "pca12_collapsed")]
    assert rows[("Plan 2 decoded", "pca12_copy")].endswith("| works |")


def test_encoder_rows_compare_with_the_pixel_pca_baseline(report) -> None:
    row = report["rows"][("encoders", "pca12")]
    assert "| PCA-8 " in row and "k-NN accuracy" in row  # FAST's --baseline-components 8


def test_loop_and_clip_rows_read_their_stage_files(report) -> None:
    rows = report["rows"]
    assert "FID 12.0" in rows[("loop", "generation 0")]
    assert rows[("loop", "generation 0")].endswith("| works |")
    assert "FID 80.0" in rows[("loop", "generation 2")]
    assert "0.900" in rows[("small CLIP", "zero-shot")]


def test_three_pictures_to_open_first(report) -> None:
    pictures = report["text"].split("Open first:\n")[1].splitlines()
    assert [Path(p.removeprefix("- ")).name for p in pictures] == [
        "plan1_digits_pca12_copy_samples.png", "plan2_digits_pca12_copy_samples.png",
        "digits_loop_metrics.png"]
    assert "Open first" in report["stdout"]


def test_a_loop_that_does_not_work_is_said(tmp_path: Path) -> None:
    build(tmp_path, loop_fid=141.0)
    (tmp_path / "results" / "metrics.json").write_text(json.dumps({}))
    result = run("demo_report.py", "--dataset", "digits", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "| loop | generation 0 | FID 141.0 | floor 3.00 | **does not meet its bar** |" in (
        result.stdout)


def test_missing_metrics_stops_with_the_command_to_run(tmp_path: Path) -> None:
    result = run("demo_report.py", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "run evaluate.py --data-dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("name", "content", "words"), [
    ("metrics.json", '{"plan1": {"digits": {"m": {"fid": 3.0', "metrics.json: not readable as "
                                                                 "evaluate.py's JSON"),
    ("metrics.json", '{"plan1": {"digits": {"m": {"fid": NaN, "class_consistency": 0.9}}}}',
     "metrics.json: 'fid' is nan, not a finite number"),
    ("metrics.json", '{"plan1": {"digits": {"m": {"fid": "3"}}}}',
     "metrics.json: 'fid' is '3', not a finite number"),
    ("metrics.json", '{"plan1": {"digits": ["m"]}}', "its 'plan1' entry is not evaluate.py's"),
    ("digits_loop_metrics.json", '{"generations": [{"generation": 0}]}',
     "digits_loop_metrics.json: no 'fid' where the report reads it"),
    ("digits_loop_metrics.json", "[" * 100_000, "digits_loop_metrics.json: not readable"),
    ("clip_digits_zero_shot.json", '{"zero_shot_accuracy": null}',
     "'zero_shot_accuracy' is None, not a finite number"),
])
def test_a_broken_or_mistyped_results_file_is_one_line(tmp_path: Path, name, content,
                                                       words) -> None:
    """Truncated, mistyped, NaN or too deeply nested results of the stages: one line naming the
    file and what is wrong, exit 1; never a traceback and never 'FID nan' with exit 0."""
    build(tmp_path, loop_fid=12.0)
    (tmp_path / "results" / "metrics.json").write_text("{}")
    (tmp_path / "results" / name).write_text(content)
    result = run("demo_report.py", "--dataset", "digits", "--data-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
