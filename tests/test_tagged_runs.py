"""Variants side by side (--tag): tagged runs of a stage and the untagged one coexist and each
resumes from its own checkpoint; a later stage reads a tagged input with --input-tag; evaluate.py
and the stages' tables show every tag as a row with the settings unlike the untagged run's; bad
tags stop in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_runner import run_script

from dataio.artifacts import load_meta
from reporting.tagged_runs import settings_difference, variant_notes

ENCODER = ["--dataset", "digits", "--device", "cpu", "--models", "ae_basic", "--limit", "256",
           "--embedding-dim", "8"]


def encoders(data_dir: Path, *args: str):
    return run_script("encoder_models.py", *ENCODER, "--data-dir", str(data_dir), *args)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untagged run and two tagged ones (another learning rate, another epoch count), one
    epoch each."""
    folder = tmp_path_factory.mktemp("tags")
    for args in ((), ("--tag", "lr3", "--learning-rate", "3e-3"), ("--tag", "b64",
                                                                   "--batch-size", "64")):
        result = encoders(folder, "--epochs", "1", *args)
        assert result.returncode == 0, result.stderr
    return folder


def test_tagged_and_untagged_runs_coexist_and_each_resumes_its_own(three_runs, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(three_runs, folder)
    names = sorted(p.name for p in (folder / "embeddings").glob("*.npz"))
    assert names == ["digits_ae_basic.npz", "digits_ae_basic@b64.npz", "digits_ae_basic@lr3.npz"]
    checkpoints = sorted(p.name for p in (folder / "checkpoints" / "encoders").glob("*.pt"))
    assert checkpoints == ["digits_ae_basic.pt", "digits_ae_basic@b64.pt",
                           "digits_ae_basic@lr3.pt"]
    assert load_meta(folder / "embeddings" / "digits_ae_basic@lr3.npz")["settings"][
        "learning_rate"] == 3e-3
    before = {n: (folder / "embeddings" / n).read_bytes() for n in names}

    second = encoders(folder, "--epochs", "2", "--tag", "lr3", "--learning-rate", "3e-3")
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout and "digits_ae_basic@lr3.pt after epoch 1" in \
        second.stdout and "epoch 2/2" in second.stdout
    after = {n: (folder / "embeddings" / n).read_bytes() for n in names}
    assert after["digits_ae_basic@lr3.npz"] != before["digits_ae_basic@lr3.npz"]
    assert after["digits_ae_basic.npz"] == before["digits_ae_basic.npz"]
    assert after["digits_ae_basic@b64.npz"] == before["digits_ae_basic@b64.npz"]
    assert load_meta(folder / "embeddings" / "digits_ae_basic@lr3.npz")["epochs_trained"] == 2

    # Another setting under the same tag: refused, naming the setting and both values.
    other = encoders(folder, "--epochs", "3", "--tag", "b64", "--batch-size", "32")
    assert other.returncode == 1
    assert "digits_ae_basic@b64.pt was trained with other settings" in other.stderr
    assert "batch_size: now 32, checkpoint 64" in other.stderr


@pytest.mark.parametrize(("flags", "words"), [
    (["--tag", "a/b"], "--tag 'a/b': a tag is 1 to 64 letters"),
    (["--tag", "../up"], "--tag '../up': a tag is"),
    (["--tag", ""], "--tag: an empty tag; leave --tag out"),
    (["--tag", "x" * 65], "a tag is 1 to 64"),
])
def test_a_tag_that_cannot_be_part_of_a_file_name_stops_in_one_line(tmp_path, flags, words):
    result = encoders(tmp_path, *flags)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "embeddings").exists()


def test_a_later_stage_reads_a_tagged_input_and_must_tag_its_own_outputs(three_runs, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(three_runs, folder)
    flow = ["--dataset", "digits", "--encoders", "ae_basic", "--flows", "realnvp", "--epochs",
            "1", "--samples", "50", "--gmm-components", "2", "--hidden", "16",
            "--realnvp-layers", "2", "--device", "cpu", "--data-dir", str(folder)]
    untagged_output = run_script("flows.py", *flow, "--input-tag", "lr3")
    assert untagged_output.returncode == 2
    assert "--input-tag lr3 reads tagged inputs: name this run's outputs with a --tag too" in \
        untagged_output.stderr
    missing = run_script("flows.py", *flow, "--input-tag", "nope", "--tag", "nope")
    assert missing.returncode == 1 and "digits_ae_basic@nope.npz not found" in missing.stderr
    assert "encoder_models.py --dataset digits --models ae_basic" in missing.stderr
    assert "--tag nope" in missing.stderr

    for args in ((), ("--input-tag", "lr3", "--tag", "lr3")):
        result = run_script("flows.py", *flow, *args)
        assert result.returncode == 0, result.stderr
    assert load_meta(folder / "embeddings" / "digits_ae_basic+realnvp@lr3.npz")[
        "source_embeddings"] == "digits_ae_basic@lr3.npz"
    table = (folder / "results" / "flows_digits.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()
            if line.startswith("| ae_basic")}
    assert set(rows) == {"ae_basic+realnvp", "ae_basic+realnvp@lr3"}
    assert 'input_tag "" -> lr3' in rows["ae_basic+realnvp@lr3"]


def test_evaluate_shows_every_tag_as_a_row_with_what_differs(three_runs, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(three_runs, folder)
    result = run_script("evaluate.py", "--data-dir", str(folder), "--stages", "embeddings",
                        "--device", "cpu", "--no-plots", "--kmeans-init", "1",
                        "--silhouette-samples", "100", "--baseline-components", "0",
                        "--compare", "lr3")
    assert result.returncode == 0, result.stderr
    summary = (folder / "results" / "summary.md").read_text()
    assert "settings unlike the untagged run" in summary
    rows = {line.split(" | ")[1]: line for line in summary.splitlines()
            if line.startswith("| digits | ae_basic")}
    assert set(rows) == {"ae_basic", "ae_basic@lr3", "ae_basic@b64"}
    assert rows["ae_basic@lr3"].rstrip(" |").endswith("learning_rate 0.001 -> 0.003")
    assert rows["ae_basic@b64"].rstrip(" |").endswith("batch_size 256 -> 64")

    # --compare lr3: the lr3 run and the untagged one, their headline metrics side by side.
    import json

    compared = (folder / "results" / "comparison.md").read_text()
    lines = [line for line in compared.splitlines() if line.startswith("| digits")]
    assert [line.split(" | ")[1] for line in lines] == ["ae_basic", "ae_basic@lr3"]
    measured = json.loads((folder / "results" / "metrics.json").read_text())
    knn = measured["embeddings"]["digits"]["ae_basic@lr3"]["knn_accuracy"]
    assert lines[1].split(" | ")[2] == f"{knn:.3f}"
    assert lines[0].endswith("(untagged) |") and "learning_rate 0.001 -> 0.003" in lines[1]


def test_the_note_names_each_differing_setting_against_the_untagged_run():
    untagged = {"tag": "", "learning_rate": 1e-3, "models": ["a", "b"], "device": "cpu"}
    tagged = {"tag": "t", "learning_rate": 3e-3, "models": ["a"], "device": "cuda", "new": 1}
    assert settings_difference(tagged, untagged) == \
        "learning_rate 0.001 -> 0.003; models a,b -> a; new (unset) -> 1"
    assert settings_difference({"tag": "t", "x": 1}, {"tag": "", "x": 1}) == "same settings"
    assert settings_difference({"tag": "t"}, None) == "no untagged run"
    notes = variant_notes({"vae_gan": untagged, "vae_gan@t_decoder": tagged,
                           "vae_gan@u": {"tag": "u", "learning_rate": 1e-3, "models": ["a", "b"]}})
    assert notes["vae_gan"] == ""
    assert notes["vae_gan@u"] == "same settings"
    assert notes["vae_gan@t_decoder"] == "no untagged run"  # its untagged name is vae_gan_decoder
