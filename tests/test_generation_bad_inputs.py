"""Bad inputs to the generation-drift stages (issue 8): each is run as a user runs the stage and
must end with a non-zero exit, one ``error:`` line naming the file or setting, no traceback, and
the previous outputs untouched. The stages run in-process (runpy, as `python script ...`), and
as real processes for Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import test_generation_drift as drift

from dataio.artifacts import save_npz

ROOT = Path(__file__).resolve().parents[1]
# The drift tests' fixtures, built again here.
tiny_clip, coco, extracted = drift.tiny_clip, drift.coco, drift.extracted
PREVIOUS = {"coco_caption_embeddings.npz": b"previous captions",
            "gen_0_embeddings.npz": b"previous gen 0"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def previous_outputs(folder: Path) -> dict[Path, bytes]:
    """Stand-ins for the files of an earlier run, to check that a failed run leaves them alone."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in PREVIOUS.items():
        (folder / name).write_bytes(content)
        written[folder / name] = content
    return written


def assert_refused(script: Path, flags: list[str], expected: str,
                   capsys: pytest.CaptureFixture, untouched: dict[Path, bytes],
                   code: int = 1) -> str:
    """Run the stage; check the exit code (2: a setting wrong on its face, 1: a file or data
    problem), the one error line and the untouched files; the line."""
    with pytest.raises(SystemExit) as exited:
        drift.run_script(script, *flags)
    assert exited.value.code == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err
    for path, content in untouched.items():
        assert path.read_bytes() == content, path
    folder = next(iter(untouched)).parent
    written = [p.name for p in folder.iterdir() if not p.name.startswith(".lock-")]  # its lock
    assert sorted(written) == sorted(p.name for p in untouched)
    return errors[0]


# ---- extract_generation_embeddings.py ----

def annotations_with(coco: Path, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    document = json.loads((coco / "annotations" / "captions.json").read_text())
    change(document)
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(document))
    return path


def set_first(key: str, value: object) -> Callable[[dict], None]:
    return lambda document: document["annotations"][0].update({key: value})


@pytest.mark.parametrize("change, expected", [
    (set_first("caption", None), "annotation 0 has a 'caption' that is not a non-empty string"),
    (set_first("image_id", 9.6), "annotation 0 has an 'image_id' that is not an integer"),
    (set_first("image_id", "9"), "annotation 0 has an 'image_id' that is not an integer"),
    (lambda document: document.update(annotations=None), "'annotations' is null"),
    (lambda document: document.pop("annotations"), "'annotations' is missing"),
])
def test_malformed_annotations_refused(tiny_clip: Path, coco: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture,
                                       change: Callable[[dict], None], expected: str) -> None:
    annotation_file = annotations_with(coco, tmp_path, change)
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--annotation-file",
                                str(annotation_file))
    assert str(annotation_file) in assert_refused(drift.EXTRACT, flags, expected, capsys,
                                                  untouched)


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_a_broken_local_config_is_named_not_blamed_on_being_offline(
        tiny_clip: Path, coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        name: str) -> None:
    model = tmp_path / "clip"
    shutil.copytree(tiny_clip, model)
    (model / name).write_text('{"model_type": "clip",')  # cut short
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--model", str(model))
    line = assert_refused(drift.EXTRACT, flags, f"{model / name}: not valid JSON", capsys,
                          untouched)
    assert "offline" not in line


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_model_weights_refused(tiny_clip: Path, coco: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture, damage: str) -> None:
    model = tmp_path / "clip"
    shutil.copytree(tiny_clip, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"" if damage == "empty" else data[:len(data) // 2])
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--model", str(model))
    assert_refused(drift.EXTRACT, flags, f"{weights}: could not load the CLIP model", capsys,
                   untouched)


@pytest.mark.parametrize("setting, value, expected", [
    ("--batch-size", "0", "--batch-size 0: must be >= 1"),
    ("--workers", "-1", "--workers -1: must be >= 0"),
    ("--num-captions", "0", "--num-captions 0: must be >= 1"),
    ("--preprocessing", "gpu", "--preprocessing"),
    ("--pairing", "name", "--pairing"),
    ("--shard", "3/2", "--shard '3/2': expected i/n with 0 <= i < n"),
    ("--shard", "half", "--shard 'half'"),
])
def test_bad_extraction_settings_refused(tiny_clip: Path, coco: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture, setting: str,
                                         value: str, expected: str) -> None:
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", setting, value)
    assert_refused(drift.EXTRACT, flags, expected, capsys, untouched, code=2)


def test_generation_without_a_readable_image_refused(tiny_clip: Path, coco: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    # gen 0 is fine; every image of gen 1 is broken: nothing is written, not even gen 0.
    shutil.copytree(coco / "gen_0", tmp_path / "gen_0")
    (tmp_path / "gen_1").mkdir()
    for image_id in (9, 25):
        (tmp_path / "gen_1" / drift.COCO_NAME.format(image_id, "png")).write_bytes(b"broken")
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--generations", "0,1",
                                "--generation-dir-pattern", str(tmp_path / "gen_{g}"),
                                "--workers", "0")
    assert_refused(drift.EXTRACT, flags, f"no readable image in {tmp_path / 'gen_1'}", capsys,
                   untouched)


# ---- plot_generation_clusters.py ----

def rewrite(path: Path, change: Callable[[dict], None], meta: object = None) -> None:
    data = drift.load(path)
    original_meta = json.loads(str(data.pop("meta")))
    change(data)
    save_npz(path, data, original_meta if meta is None else meta)


def collapse(data: dict) -> None:
    data["image_embeddings"] = np.repeat(data["image_embeddings"][:1], len(data["image_ids"]), 0)


def repeat_an_id(data: dict) -> None:
    data["image_ids"] = data["image_ids"].copy()
    data["image_ids"][1] = data["image_ids"][0]


def plot_case(tmp_path: Path) -> tuple[list[str], dict[Path, bytes]]:
    drift.synthetic_embeddings(tmp_path, [0, 1, 2])
    results = tmp_path / "results"
    results.mkdir()
    (results / "generation_metrics.json").write_text("previous results")
    return drift.plot_flags(tmp_path, tmp_path, "0,1,2"), {
        results / "generation_metrics.json": b"previous results"}


@pytest.mark.parametrize("file, change, expected", [
    ("gen_0", collapse, "gen_0_embeddings.npz: the 12 image embeddings of generation 0, the "
                        "reference, have a total variance of 0"),
    ("gen_0", lambda data: data.update(image_embeddings=drift.l2_normalise(
        np.repeat(data["image_embeddings"][:1], 12, 0)
        + 1e-5 * np.random.default_rng(0).normal(size=(12, 16))).astype(np.float32)),
     "gen_0_embeddings.npz: the 12 image embeddings of generation 0, the reference, have a "
     "total variance of"),
    ("gen_1", lambda data: data.update({k: v[:0] for k, v in data.items()}),
     "gen_1_embeddings.npz: holds 0 image(s); at least 2 are needed"),
    ("gen_1", repeat_an_id, "gen_1_embeddings.npz: key 'image_ids' repeats id(s) [100]"),
    ("gen_2", "meta-list", "gen_2_embeddings.npz: key 'meta' is a JSON list"),
])
def test_bad_generation_files_refused(tmp_path: Path, capsys: pytest.CaptureFixture, file: str,
                                      change: object, expected: str) -> None:
    flags, untouched = plot_case(tmp_path)
    path = tmp_path / f"{file}_embeddings.npz"
    if change == "meta-list":
        data = drift.load(path)
        data.pop("meta")
        np.savez(path, **data, meta=np.array(json.dumps([1, 2])))
    else:
        rewrite(path, change)
    assert_refused(drift.PLOT, flags, expected, capsys, untouched)
    assert not (tmp_path / "vis").exists()


@pytest.mark.parametrize("setting, value, expected", [
    ("--perplexity", "0", "--perplexity 0.0: must be > 0"),
    ("--figure-dpi", "0", "--figure-dpi 0: must be >= 10"),
    ("--caption-colour", "x", "--caption-colour 'x': not a matplotlib colour"),
    ("--tsne-max-iter", "10", "--tsne-max-iter 10: must be >= 250"),
    ("--tsne-pca-dims", "-1", "--tsne-pca-dims -1: must be >= 0"),
])
def test_bad_plot_settings_refused(tmp_path: Path, capsys: pytest.CaptureFixture, setting: str,
                                   value: str, expected: str) -> None:
    flags, untouched = plot_case(tmp_path)
    assert_refused(drift.PLOT, [*flags, setting, value], expected, capsys, untouched, code=2)


def test_a_collapsed_later_generation_is_measured(tmp_path: Path) -> None:
    drift.synthetic_embeddings(tmp_path, [0, 1, 2])
    rewrite(tmp_path / "gen_2_embeddings.npz", collapse)
    drift.run_script(drift.PLOT, *drift.plot_flags(tmp_path, tmp_path, "0,1,2"))
    results = json.loads((tmp_path / "results" / "generation_metrics.json").read_text())
    last = results["generations"][-1]
    assert last["total_variance"] == 0.0 and last["total_variance_ratio_to_first"] == 0.0
    assert last["diversity"] == pytest.approx(0.0, abs=1e-6)


# ---- Ctrl-C, in real processes ----

def interrupt_when(command: list[str], printed: str) -> tuple[int, str]:
    """Start a stage, send SIGINT once it has printed ``printed``; its exit code and stderr."""
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if printed in line:
            break
    assert process.poll() is None, "the stage ended before it could be interrupted"
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def test_ctrl_c_in_extraction_keeps_previous_outputs(tiny_clip: Path, coco: Path,
                                                     tmp_path: Path) -> None:
    folder = tmp_path / "gen_0"
    folder.mkdir()
    for image_id in (9, 25, 30, 34, 36, 42, 49):
        drift.write_image(folder / drift.COCO_NAME.format(image_id, "png"), image_id)
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--generations", "0",
                                "--generation-dir-pattern", str(tmp_path / "gen_{g}"),
                                "--workers", "0", "--batch-size", "1")
    # A generation list long enough to outlast the signal: the same folder 400 times over.
    flags[flags.index("--generations") + 1] = ",".join(str(g) for g in range(400))
    for g in range(1, 400):
        (tmp_path / f"gen_{g}").symlink_to(folder)
    code, err = interrupt_when([str(drift.EXTRACT), *flags], "model ")
    assert code == 130 and "interrupted" in err and "checkpoint" not in err, err
    assert "Traceback" not in err
    for path, content in untouched.items():
        assert path.read_bytes() == content


def test_ctrl_c_in_plot_stage(tmp_path: Path) -> None:
    drift.synthetic_embeddings(tmp_path, [0, 1], count=400)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "generation_metrics.json").write_text("previous results")
    flags = drift.plot_flags(tmp_path, tmp_path, "0,1")
    code, err = interrupt_when([str(drift.PLOT), *flags, "--tsne-max-iter", "20000"], "t-SNE of")
    assert code == 130 and "interrupted" in err and "checkpoint" not in err, err
    assert "Traceback" not in err
    assert (tmp_path / "results" / "generation_metrics.json").read_text() == "previous results"


# ---- issue 35: what a reviewer tried ----

def other_clip(tiny_clip: Path, folder: Path, seed: int) -> Path:
    """The tiny CLIP's files with other random weights (written over ``folder``'s if it holds a
    model): the same names, another model, as a CLIP retrained in place."""
    import torch
    from transformers import CLIPModel

    if not folder.exists():
        shutil.copytree(tiny_clip, folder)
    torch.manual_seed(seed)
    CLIPModel(CLIPModel.from_pretrained(tiny_clip).config).save_pretrained(folder)
    return folder


def test_a_reference_embedded_with_other_weights_than_the_captions_is_refused(
        tiny_clip: Path, coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CLIP retrained in place (or another --model): its reference embeddings would be
    compared with generations of the old one; the weights' fingerprint in the files says so."""
    out = tmp_path / "embeddings"
    drift.run_script(drift.EXTRACT, *drift.extract_flags(tiny_clip, coco, out, "--generations",
                                                         "0,1"))
    capsys.readouterr()
    retrained = other_clip(tiny_clip, tmp_path / "retrained", seed=1)
    results = tmp_path / "results"
    results.mkdir()
    (results / "generation_metrics.json").write_text("previous results")
    flags = [*drift.plot_flags(out, tmp_path, "0,1"), "--reference-dir", str(coco / "gen_0"),
             "--model", str(retrained), "--device", "cpu"]
    assert_refused(drift.PLOT, flags, "the captions were embedded with CLIP weights", capsys,
                   {results / "generation_metrics.json": b"previous results"})


def test_shards_embedded_with_other_weights_are_not_merged(tiny_clip: Path, coco: Path,
                                                           tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The model folder retrained in place between the two shard runs: same settings, other
    weights; the merge refuses them, naming the fingerprints."""
    out, model = tmp_path / "embeddings", tmp_path / "clip"
    shutil.copytree(tiny_clip, model)
    for shard in ("0/2", "1/2"):
        drift.run_script(drift.EXTRACT, *drift.extract_flags(
            model, coco, out, "--generations", "0", "--shard", shard))
        other_clip(tiny_clip, model, seed=1)  # retrained in place after the first shard
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        drift.run_script(drift.EXTRACT, *drift.extract_flags(
            model, coco, out, "--generations", "0", "--shard", "0/2", "--merge"))
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "was embedded with other CLIP weights" in err, err
    assert not (out / "coco_caption_embeddings.npz").exists()


def test_captions_nested_too_deeply_are_one_line(tiny_clip: Path, coco: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    deep = tmp_path / "captions.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--annotation-file",
                                str(deep))
    assert_refused(drift.EXTRACT, flags, "JSON nested too deeply", capsys, untouched)


def test_an_unknown_placeholder_in_the_folder_pattern_is_a_setting_error(
        tiny_clip: Path, coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--generation-dir-pattern",
                                str(coco / "gen_{g}_{x}"))
    assert_refused(drift.EXTRACT, flags, "{g} is its only placeholder", capsys, untouched,
                   code=2)


@pytest.mark.parametrize(("content", "words"), [
    (None, "config.json: not found: a model directory written by save_pretrained holds one"),
    ("[1, 2]", "config.json: a JSON list, not the object save_pretrained writes"),
])
def test_a_missing_or_non_object_config_is_named(tiny_clip: Path, coco: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, content,
                                                 words) -> None:
    model = tmp_path / "clip"
    shutil.copytree(tiny_clip, model)
    if content is None:
        (model / "config.json").unlink()
    else:
        (model / "config.json").write_text(content)
    untouched = previous_outputs(tmp_path / "out")
    flags = drift.extract_flags(tiny_clip, coco, tmp_path / "out", "--model", str(model))
    line = assert_refused(drift.EXTRACT, flags, words, capsys, untouched)
    assert "model.safetensors" not in line


def test_reference_folder_problems_point_the_right_way(
        extracted: tuple[Path, str], tiny_clip: Path, coco: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """A missing --reference-dir is named as such (not as a generation folder with the pattern
    hint), and an unnamed file in it is not told to use a --pairing the plot stage lacks."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "generation_metrics.json").write_text("previous results")
    untouched = {results / "generation_metrics.json": b"previous results"}
    base = [*drift.plot_flags(extracted[0], tmp_path, "0,2"), "--device", "cpu"]
    line = assert_refused(drift.PLOT, [*base, "--reference-dir", str(tmp_path / "nowhere")],
                          f"--reference-dir {tmp_path / 'nowhere'}: no such folder", capsys,
                          untouched)
    assert "--generation-dir-pattern" not in line
    reference = tmp_path / "reference"
    shutil.copytree(coco / "gen_0", reference)
    drift.write_image(reference / "holiday.png", 5)
    line = assert_refused(drift.PLOT, [*base, "--reference-dir", str(reference)],
                          "holiday.png", capsys, untouched)
    assert "--pairing" not in line and "the id of the caption the image shows" in line


def test_an_image_that_links_to_itself_is_named_not_dropped(
        tiny_clip: Path, coco: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gen_0"
    shutil.copytree(coco / "gen_0", folder)
    loop_link = folder / drift.COCO_NAME.format(49, "png")
    loop_link.unlink(missing_ok=True)
    (folder / drift.COCO_NAME.format(49, "jpg")).unlink(missing_ok=True)
    loop_link.symlink_to(loop_link.name)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        drift.run_script(drift.EXTRACT, *drift.extract_flags(
            tiny_clip, coco, tmp_path / "out", "--generations", "0", "--generation-dir-pattern",
            str(tmp_path / "gen_{g}"), "--workers", "0"))
    assert f"unreadable image skipped: {loop_link}" in printed.getvalue()
    meta = json.loads(str(np.load(tmp_path / "out" / "gen_0_embeddings.npz")["meta"]))
    assert meta["n_unreadable"] == 1 and meta["unreadable_files"][0]["file"] == loop_link.name
