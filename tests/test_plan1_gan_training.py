"""Plan 1 GANs: one battery over the three models, their special terms, the pairing checks of the
embedding file, and the stage run as a user runs it on digits (outputs, Ctrl-C, resume)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from script_runner import run_script

import plan1_gan_training as plan1
from dataio.artifacts import PLAN1_SAMPLE_KEYS, load_checkpoint, load_npz, make_meta, save_npz
from dataio.data_sources import load_dataset
from dataio.splits import held_out_split
from evaluation import scoring
from models import image_gans
from models.image_gans import ImageGANConfig, build_image_gan, class_condition
from runtime.settings import SettingsError, configure, pick
from runtime.stage import StageError
from training.gans import GANTrainer, TrainerSettings

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CONDITION_DIM, CLASSES = 6, 4

torch.set_num_threads(1)


def plan1_values(*args: str) -> dict:
    """The stage's settings as its command line gives them (the module is left as it is)."""
    return configure(vars(plan1), list(args))


# The image GANs as the stage builds them by default.
CONFIG = pick(ImageGANConfig, plan1_values())


def make_batch(seed: int = 0, n: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1,
            "condition": 3 * torch.randn(n, CONDITION_DIM, generator=gen) + 1,
            "label": torch.arange(n) % CLASSES}


def build(name: str) -> image_gans.ConditionalGAN:
    torch.manual_seed(0)
    model = build_image_gan(name, CONDITION_DIM, CLASSES, CONFIG)
    model.set_condition_statistics(make_batch(99, 64)["condition"])
    return model


# ---------------------------------------------------------------- the battery
@pytest.mark.parametrize("name", image_gans.GAN_NAMES)
def test_gan_battery(name, tmp_path):
    model = build(name)
    batch = make_batch()
    noise = model.sample_noise(8, torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        images = model.sample(batch["condition"], noise)
    assert images.shape == (8, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    model.train()
    for loss, parts in (model.discriminator_loss(batch), model.generator_loss(batch)):
        assert loss.ndim == 0 and torch.isfinite(loss) and "adversarial" in parts
    trainer = GANTrainer(model, TrainerSettings())
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainer.train_epoch([batch])  # one discriminator step, one generator step
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    # Every weight of G, of D (and of the Q head) moved, except the score's bias: its hinge-loss
    # gradient, -P(D(x) < 1) + P(D(G(z)) > -1), is exactly 0 while every margin is active.
    assert unchanged in ([], ["discriminator.score.linear.bias"]), unchanged
    torch.save(trainer.ema.state_dict(), tmp_path / "ema.pt")
    clone = build(name)
    clone.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(trainer.ema.sample(batch["condition"], noise),
                           clone.sample(batch["condition"], noise))


def test_generator_uses_the_condition():
    model = build("cgan").eval()
    noise = model.sample_noise(8, torch.Generator().manual_seed(1))
    a, b = make_batch(1)["condition"], make_batch(2)["condition"]
    with torch.no_grad():
        assert not torch.allclose(model.sample(a, noise), model.sample(b, noise))


def test_class_conditioned_generator_for_the_self_consuming_loop():
    """The same cGAN conditioned on one-hot classes (no statistics needed): it trains, and a
    class's samples depend on the class asked for."""
    torch.manual_seed(0)
    model = image_gans.ConditionalGAN(CLASSES)
    labels = torch.arange(8) % CLASSES
    condition = class_condition(labels, CLASSES)
    assert torch.equal(condition.argmax(1), labels) and torch.equal(condition.sum(1),
                                                                    torch.ones(8))
    batch = {"x": make_batch()["x"], "condition": condition, "label": labels}
    trainer = GANTrainer(model, TrainerSettings())
    trainer.train_epoch([batch, batch])
    noise = model.sample_noise(8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = trainer.ema.sample(condition, noise)
        b = trainer.ema.sample(class_condition((labels + 1) % CLASSES, CLASSES), noise)
    assert a.shape == (8, 1, 28, 28) and not torch.allclose(a, b)


def test_conditions_are_standardised_with_the_training_statistics():
    model = build("cgan")
    conditions = make_batch(99, 64)["condition"]
    normalised = model.normalise(conditions)
    torch.testing.assert_close(normalised.mean(0), torch.zeros(CONDITION_DIM), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(normalised.std(0), torch.ones(CONDITION_DIM), atol=1e-5, rtol=0)


def test_acgan_class_head_gives_logits_to_cross_entropy(monkeypatch):
    model = build("acgan")
    head_outputs, ce_inputs = [], []
    model.discriminator["classes"].register_forward_hook(
        lambda module, args, output: head_outputs.append(output))
    original = image_gans.F.cross_entropy

    def recording_cross_entropy(logits, target, *args, **kwargs):
        ce_inputs.append((logits, target))
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(image_gans.F, "cross_entropy", recording_cross_entropy)
    batch = make_batch()
    model.discriminator_loss(batch)
    model.generator_loss(batch)
    assert len(ce_inputs) == 2 and len(head_outputs) == 2
    for (logits, target), output in zip(ce_inputs, head_outputs, strict=True):
        assert logits is output  # the raw head output: no softmax in front
        assert torch.equal(target, batch["label"])  # real labels, and the source image's class


def test_infogan_q_head_trains_in_the_generator_step():
    model = build("infogan")
    trainer = GANTrainer(model, TrainerSettings(n_critic=2))
    q_before = [p.detach().clone() for p in model.q_head.parameters()]
    trainer.train_epoch([make_batch(0)])  # a discriminator step only
    assert all(torch.equal(a, b) for a, b in zip(q_before, model.q_head.parameters(),
                                                 strict=True))
    trainer.train_epoch([make_batch(1)])  # a discriminator step, then a generator step
    assert not any(torch.equal(a, b) for a, b in zip(q_before, model.q_head.parameters(),
                                                     strict=True))
    assert {id(p) for p in model.q_head.parameters()} <= {id(p) for p in trainer.g_params}


def test_infogan_information_loss_against_its_formula():
    model = build("infogan")
    noise = model.sample_noise(5, torch.Generator().manual_seed(3))
    features = torch.randn(5, CONFIG.feature_dim)
    with torch.no_grad():
        predicted = model.q_head(features)
    k = noise[:, model.noise_dim:model.noise_dim + model.categories].argmax(1)
    u = noise[:, model.noise_dim + model.categories:]
    expected = 0.0
    for i in range(5):
        logits = predicted[i, :model.categories]
        expected += float(torch.logsumexp(logits, 0) - logits[k[i]]) / 5
        error = predicted[i, model.categories:] - u[i]
        expected += model.continuous_weight * 0.5 * float((error ** 2).sum()) / 5
    assert float(model.information_loss(features, noise).detach()) == pytest.approx(
        model.info_weight * expected, rel=1e-5)
    codes = noise[:, model.noise_dim:]
    assert torch.equal(codes[:, :model.categories].sum(1), torch.ones(5))
    assert bool((u.abs() <= 1).all())


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(StageError, match="valid names: cgan, acgan, infogan"):
        build_image_gan("wgan", 4, 10, CONFIG)


# ---------------------------------------------------------------- pairing checks
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def pairing_run(data_dir: Path) -> plan1.Plan1Settings:
    """The settings of a digits run on ae_basic embeddings in ``data_dir``."""
    return pick(plan1.Plan1Settings, plan1_values("--dataset", "digits", "--encoder", "ae_basic",
                                                  "--data-dir", str(data_dir)))


def write_embeddings(path, data, n_train=None, limit=0, dataset="digits", **changes):
    n_train = len(data.x_train) if n_train is None else n_train
    arrays = {"z_train": np.random.default_rng(0).normal(size=(n_train, 4)).astype(np.float32),
              "y_train": data.y_train[:n_train].copy(),
              "z_test": np.zeros((len(data.x_test), 4), np.float32),
              "y_test": data.y_test.copy()}
    arrays.update(changes)
    save_npz(path, arrays, make_meta("encoder_models.py", {"limit": limit}, dataset, 0))
    return path


def test_matching_embeddings_are_paired(tmp_path, digits):
    path = write_embeddings(tmp_path / "e.npz", digits, n_train=500, limit=500)
    z_train, z_test, _ = plan1.paired_embeddings(path, digits, 300, pairing_run(tmp_path))
    assert z_train.shape == (300, 4) and z_test.shape == (len(digits.x_test), 4)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found; make it with: python encoder_models.py --dataset digits --models "),
    ("dataset", "embeds dataset 'mnist' (its meta), not 'digits'"),
    ("no_limit", "does not record the --limit"),
    ("length", "holds 400 training embeddings, but its meta says it embeds the first 500"),
    ("too_few", "embeds the first 200 training images (made with --limit 200), fewer than the 300"),
    ("test_length", "holds 10 test embeddings, the digits test split has 450 images"),
    ("train_labels", "y_train differs from the digits train labels at 2 of 300 positions"),
    ("test_labels", "y_test differs from the digits test labels"),
])
def test_embeddings_that_do_not_match_the_images_are_refused(tmp_path, digits, case, message):
    path = tmp_path / "e.npz"
    if case == "dataset":
        write_embeddings(path, digits, dataset="mnist")
    elif case == "no_limit":
        save_npz(path, {"z_train": np.zeros((10, 2), np.float32), "y_train": np.zeros(10, int),
                        "z_test": np.zeros((10, 2), np.float32), "y_test": np.zeros(10, int)},
                 {"dataset": "digits"})
    elif case == "length":
        write_embeddings(path, digits, n_train=400, limit=500)
    elif case == "too_few":
        write_embeddings(path, digits, n_train=200, limit=200)
    elif case == "test_length":
        write_embeddings(path, digits, z_test=np.zeros((10, 4), np.float32),
                         y_test=digits.y_test[:10])
    elif case == "train_labels":
        labels = digits.y_train.copy()
        labels[[3, 7]] = (labels[[3, 7]] + 1) % 10
        write_embeddings(path, digits, y_train=labels)
    elif case == "test_labels":
        write_embeddings(path, digits, y_test=np.roll(digits.y_test, 1))
    with pytest.raises(StageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan1.paired_embeddings(path, digits, 300, pairing_run(tmp_path))


# ---------------------------------------------------------------- the stage, as a user runs it
STAGE_ARGS = ("--dataset", "digits", "--encoder", "ae_basic", "--threads", "1", "--epochs", "2",
              "--limit", "256", "--held-out-fraction", "0.55", "--batch-size", "8",
              "--test-images", "300")


def run_stage(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_script("plan1_gan_training.py", *STAGE_ARGS, "--data-dir", str(data_dir), *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data folder with digits ae_basic embeddings (from the real stage 1) and a trained
    evaluator; tests copy it into their own folder."""
    folder = tmp_path_factory.mktemp("prepared")
    encoded = run_script("encoder_models.py", "--dataset", "digits", "--models", "ae_basic",
                         "--epochs", "1", "--data-dir", str(folder))
    assert encoded.returncode == 0, encoded.stderr
    scoring.load_evaluator(load_dataset("digits"), torch.device("cpu"),
                           scoring.EvaluatorSettings(data_dir=str(folder)))
    return folder


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory):
    """One uninterrupted run of the stage with every model: (data folder, its stdout)."""
    folder = tmp_path_factory.mktemp("straight")
    shutil.copytree(prepared, folder, dirs_exist_ok=True)
    return folder, run_stage(folder).stdout


def test_stage_writes_samples_grids_curves_and_report(straight):
    data_dir, stdout = straight
    digits = load_dataset("digits")
    for name in image_gans.GAN_NAMES:
        tag = f"digits_ae_basic_{name}"
        path = data_dir / "samples" / "plan1" / f"{tag}.npz"
        arrays = load_npz(path, PLAN1_SAMPLE_KEYS, aligned=(("x_gen", "idx_src", "y_src"),))
        assert arrays["x_gen"].dtype == np.uint8 and arrays["x_gen"].shape == (300, 28, 28)
        assert arrays["x_gen"].max() > arrays["x_gen"].min()  # not a blank image set
        assert np.array_equal(arrays["idx_src"], np.arange(300))  # the first 300 test images
        assert np.array_equal(arrays["y_src"], digits.y_test[:300])
        scoring.check_sources(path, arrays, digits, scoring.ScoringSettings())  # evaluate.py's
        meta = arrays["meta"]
        assert meta["gan"] == name and meta["encoder"] == "ae_basic"
        # 141 of the 256 held out (0.55): their FID chose the epoch, the rest trained
        assert meta["train_images"] == 115 and meta["test_images"] == 300
        held = meta["split"]["held_out"]
        assert meta["split"]["of"] == 256 and len(held) == 141 and max(held) < 256
        assert held == held_out_split(256, 141)[1].tolist()
        assert meta["held_out_fid"] is not None
        assert meta["epochs_trained"] == 2 and meta["best_epoch"] in (1, 2)
        visual = data_dir / "visualizations"
        for epoch in (1, 2):
            assert (visual / f"plan1_{tag}_epoch{epoch:03d}.png").stat().st_size > 0
        assert (visual / f"plan1_{tag}_losses.png").stat().st_size > 0
        assert load_checkpoint(data_dir / "checkpoints" / "plan1" / f"{tag}.pt")["epoch"] == 2
        row = next(line for line in stdout.splitlines() if line.startswith(f"| {name} |"))
        assert len(row.split("|")) == 15  # 13 columns
    assert "FID, evaluator CNN (floor)" in stdout and "class consistency (real)" in stdout
    assert "intra-class FID (floor)" in stdout and "classifier accuracy score (real)" in stdout


def default_sigint() -> None:
    """Background shells start children with SIGINT ignored; restore Python's handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_then_resume_equals_the_uninterrupted_run(prepared, straight, tmp_path):
    data_dir = copy_prepared(prepared, tmp_path)
    ckpt = data_dir / "checkpoints" / "plan1" / "digits_ae_basic_cgan.pt"
    proc = subprocess.Popen([sys.executable, "plan1_gan_training.py", *STAGE_ARGS, "--data-dir",
                             str(data_dir), "--models", "cgan"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert load_checkpoint(ckpt)["epoch"] == 1
    result = run_stage(data_dir, "--models", "cgan")
    assert f"resuming from {ckpt} after epoch 1, continuing at epoch 2/2" in result.stdout
    name = "samples/plan1/digits_ae_basic_cgan.npz"
    resumed = load_npz(data_dir / name, PLAN1_SAMPLE_KEYS)
    uninterrupted = load_npz(straight[0] / name, PLAN1_SAMPLE_KEYS)
    assert np.array_equal(resumed["x_gen"], uninterrupted["x_gen"])
    other = run_stage(data_dir, "--models", "cgan", "--epochs", "3", "--loss", "least-squares",
                      check=False)
    assert other.returncode == 1
    assert "loss: now 'least-squares', checkpoint 'hinge'" in other.stderr


def copy_prepared(prepared: Path, target: Path) -> Path:
    shutil.copytree(prepared, target, dirs_exist_ok=True)
    return target


@pytest.fixture
def stage_main():
    """Call the stage's main() in this process with a command line (cheaper than a process)."""
    def call(*args: str) -> None:
        plan1.main([*STAGE_ARGS, *args])

    return call


def test_missing_embedding_file_names_the_command(stage_main, tmp_path):
    with pytest.raises(StageError) as caught:
        stage_main("--data-dir", str(tmp_path))
    assert str(caught.value).endswith(
        "make it with: python encoder_models.py --dataset digits --models ae_basic --limit 256 "
        f"--data-dir {tmp_path}")


def test_limit_without_a_full_batch_is_refused(stage_main, tmp_path):
    with pytest.raises(StageError, match="--limit 100 and --held-out-fraction 0.55 leave 100 "
                                         "training images, not one full "
                                         "batch of --batch-size 128"):
        stage_main("--data-dir", str(tmp_path), "--limit", "100", "--batch-size", "128")


def test_too_few_test_images_for_a_fid_are_refused(stage_main, tmp_path):
    """Wrong on its face: refused before any file is read (an empty data dir), exit 2."""
    with pytest.raises(SettingsError, match="--test-images 100: the FID on 128-d features needs "
                                            "more than 128 images"):
        stage_main("--data-dir", str(tmp_path), "--test-images", "100")
    result = run_stage(tmp_path, "--test-images", "100", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_run_is_logged_for_tensorboard_with_losses_scores_and_grids(straight):
    """TensorBoard's own reader finds each interval's losses by step, each epoch's record and
    held-out FID by epoch, the epoch grids as images and the settings as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_dir, _ = straight
    events = EventAccumulator(str(data_dir / "runs" / "plan1" / "digits_ae_basic_cgan"),
                              size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"steps/d/loss", "steps/g/loss", "epochs/d/loss", "epochs/score",
            "epochs/seconds"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("epochs/score")] == [1, 2]
    steps = [e.step for e in events.Scalars("steps/g/loss")]
    assert steps == sorted(steps) and len(steps) >= 2
    assert [e.step for e in events.Images("samples")] == [1, 2]
    assert "settings/text_summary" in tags["tensors"]
