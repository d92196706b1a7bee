"""flows.py: invertibility and log-determinants of every flow (against the autograd Jacobian),
density fits with known answers, the sphere chart, and the stage run end to end on digits."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from script_runner import run_script
from sklearn.datasets import make_moons
from sklearn.decomposition import PCA

import flows
from dataio.artifacts import (
    GENERATED_EMBEDDING_KEYS,
    load_checkpoint,
    load_embeddings,
    load_npz,
    make_meta,
    save_npz,
)
from dataio.data_sources import load_dataset
from models import flow_models
from models.flow_models import (
    Flow,
    FlowConfig,
    MADEAffine,
    Preprocessing,
    build_flow,
    fit_preprocessing,
    gaussian_nll,
    mean_nll,
    rational_quadratic_spline,
    to_base,
)
from runtime.settings import configure, pick
from runtime.stage import StageError
from runtime.tracking import RunLog

ROOT = Path(__file__).resolve().parent.parent
NAMES = flow_models.FLOW_NAMES
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The small flows of the unit tests: 3 layers of each kind, width 32.
SMALL = FlowConfig(hidden=32, realnvp_layers=3, maf_layers=3, nsf_layers=3)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def stage_settings(*argv: str) -> tuple[flows.FlowTraining, FlowConfig]:
    """The stage's settings as `python flows.py *argv` would read them."""
    values = configure(vars(flows), list(argv))
    return pick(flows.FlowTraining, values), pick(FlowConfig, values)


def skewed_data(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Correlated, skewed, two-cluster data: far from what an identity flow models."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=gen)
    mixing = torch.randn(dim, dim, generator=gen) / math.sqrt(dim) + torch.eye(dim)
    x = base @ mixing
    x[:, 0] = x[:, 0] ** 2 - 1 + 0.5 * x[:, 1]
    x[: n // 2] += 2.0
    return (x - x.mean(0)) / x.std(0)


def trained_flow(name: str, dim: int, steps: int, dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> tuple[Flow, torch.Tensor]:
    """A small flow (SMALL: 3 layers of each kind, width 32) with ActNorm initialised from a real
    batch, after `steps` Adam steps."""
    torch.manual_seed(seed)
    x = skewed_data(512, dim, seed).to(dtype)
    flow = build_flow(name, dim, SMALL, seed).to(dtype)
    flow.initialize(x[:256])
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for step in range(steps):
        batch = x[(step * 64) % 512:(step * 64) % 512 + 64]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow, x


# ---------------------------------------------------------------- every flow, one battery
@pytest.mark.parametrize("name", NAMES)
def test_flow_battery(name, tmp_path):
    flow, x = trained_flow(name, 6, steps=2)
    z, log_det = flow(x[:32])
    assert z.shape == (32, 6) and log_det.shape == (32,)
    log_p = flow.log_prob(x[:32])
    assert log_p.shape == (32,) and torch.isfinite(log_p).all()
    # two steps from zero-initialised conditioner outputs reach every trainable tensor
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(2):
        loss = -flow.log_prob(x[:64]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unchanged = [k for k, p in flow.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged
    samples = flow.sample(100, torch.Generator().manual_seed(0))
    assert samples.shape == (100, 6) and torch.isfinite(samples).all()
    torch.save(flow.state_dict(), tmp_path / "f.pt")
    clone = build_flow(name, 6, SMALL, 0)
    clone.load_state_dict(torch.load(tmp_path / "f.pt", weights_only=True))
    assert clone.is_initialized()
    assert torch.equal(clone.log_prob(x[:32]), flow.log_prob(x[:32]))


@pytest.mark.parametrize("name", NAMES)
def test_flow_starts_as_identity_after_actnorm(name):
    """Zero-initialised conditioner outputs: before training, the flow is ActNorm alone, a
    per-dimension standardisation of the batch it was initialised from."""
    x = skewed_data(400, 5) * torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0]) + 1.0
    flow = build_flow(name, 5, FlowConfig())
    flow.initialize(x)
    z, _ = flow(x)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z.std(0, correction=0), torch.ones(5), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_undoes_forward(name):
    flow, x = trained_flow(name, 7, steps=60)
    with torch.no_grad():
        z, _ = flow(x)
        assert (z - x).abs().max() > 0.1  # trained: far from the identity
        assert torch.allclose(flow.inverse(z), x, atol=1e-5, rtol=0)
        # a 7-sigma outlier, beyond the spline bounds: |z| reaches tens, float32 keeps ~1e-4
        outlier = torch.tensor([[6.0, -7.0, 0.5, 5.5, -0.2, 8.0, -6.5]])
        assert torch.allclose(flow.inverse(flow(outlier)[0]), outlier, atol=1e-4, rtol=0)
        z = torch.randn(200, 7, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(flow(flow.inverse(z))[0], z, atol=1e-5, rtol=0)


def probe_points(x: torch.Tensor) -> torch.Tensor:
    """A few rows, plus one beyond the spline bounds."""
    far = torch.full((1, x.shape[1]), 5.0, dtype=x.dtype)
    far[0, ::2] = -5.5
    return torch.cat([x[:5], far])


@pytest.mark.parametrize("steps", [0, 80], ids=["at_init", "trained"])
@pytest.mark.parametrize("dim", [5, 8])
@pytest.mark.parametrize("name", NAMES)
def test_log_det_equals_autograd_jacobian(name, dim, steps):
    """Each layer's log|det| (and the flow's sum) against log|det J| of the full autograd
    Jacobian, in float64, at points inside and outside the spline bounds."""
    flow, x = trained_flow(name, dim, steps, dtype=torch.float64)
    points = probe_points(x)
    off_diagonal = 0.0
    for point in points:
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], point)
        sign, log_abs_det = torch.linalg.slogdet(jacobian)
        assert sign != 0
        with torch.no_grad():
            assert float(flow(point[None])[1]) == pytest.approx(float(log_abs_det), abs=1e-4)
        off_diagonal = max(off_diagonal, float((jacobian - torch.diag(jacobian.diagonal()))
                                               .abs().max()))
        h = point[None]
        for layer in flow.layers:
            layer_jacobian = torch.autograd.functional.jacobian(lambda v, m=layer: m(v[None])[0][0],
                                                                h[0])
            expected = torch.linalg.slogdet(layer_jacobian)[1]
            with torch.no_grad():
                h, log_det = layer(h)
            assert float(log_det) == pytest.approx(float(expected), abs=1e-4), layer
    if steps:
        assert off_diagonal > 0.05  # the coupling / autoregressive parts are really at work


def test_made_is_autoregressive():
    """With random weights, output i (shift and log-scale) depends on inputs before i only."""
    torch.manual_seed(0)
    made = MADEAffine(6, 32, 3.0).double()
    for layer in made.layers:
        torch.nn.init.normal_(layer.weight)
    x = torch.randn(6, dtype=torch.float64)
    for part in (0, 1):
        jacobian = torch.autograd.functional.jacobian(
            lambda v, p=part: made._shift_log_scale(v[None])[p][0], x)
        assert torch.equal(jacobian.triu(), torch.zeros_like(jacobian))
        assert (jacobian.tril(-1).abs() > 0).sum() == 15  # every allowed dependence is used


def test_rational_quadratic_spline_against_its_definition():
    """Monotone, onto [-B, B], identity outside, slope equal to a finite difference, inverse
    exact, and the identity when every raw parameter is zero."""
    torch.manual_seed(0)
    bound, bins, n = 3.0, 5, 2001
    raw = [torch.randn(1, k, 1, dtype=torch.float64).expand(n, k, 1) * 2
           for k in (bins, bins, bins - 1)]
    x = torch.linspace(-4.5, 4.5, n, dtype=torch.float64)[:, None]
    y, log_slope = rational_quadratic_spline(x, *raw, bound)
    assert (y[1:] > y[:-1]).all()
    inside = x.abs() <= bound
    assert torch.equal(y[~inside], x[~inside]) and torch.equal(log_slope[~inside],
                                                               torch.zeros_like(x[~inside]))
    ends = torch.tensor([[-bound], [bound]], dtype=torch.float64)
    assert torch.allclose(rational_quadratic_spline(ends, *[r[:2] for r in raw], bound)[0],
                          ends, atol=1e-12)
    step = 1e-6
    numeric = (rational_quadratic_spline(x + step, *raw, bound)[0]
               - rational_quadratic_spline(x - step, *raw, bound)[0]) / (2 * step)
    keep = (x.abs() < bound - 1e-3)
    assert torch.allclose(log_slope[keep].exp(), numeric[keep], rtol=1e-6)
    back, log_slope_back = rational_quadratic_spline(y, *raw, bound, inverse=True)
    assert torch.allclose(back, x, atol=1e-9) and torch.allclose(log_slope_back, log_slope,
                                                                 atol=1e-8)
    zeros = [torch.zeros_like(r) for r in raw]
    identity, log_one = rational_quadratic_spline(x, *zeros, bound)
    assert torch.allclose(identity, x, atol=1e-12) and torch.allclose(log_one,
                                                                      torch.zeros_like(x))


def test_sample_refuses_a_flow_never_initialised_from_data():
    with pytest.raises(RuntimeError, match="initialise"):
        build_flow("realnvp", 4, FlowConfig()).sample(10)


# ---------------------------------------------------------------- preprocessing
def test_standardisation_round_trip():
    rng = np.random.default_rng(0)
    z = rng.normal(3.0, 5.0, (300, 6)) * np.arange(1, 7)
    pre = fit_preprocessing(z, z[:50])
    assert pre.radius == 0 and pre.dims == 6
    m = pre.to_model(z)
    np.testing.assert_allclose(m.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(m.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(pre.from_model(m), z, atol=1e-10)
    restored = Preprocessing.from_state(pre.state())
    np.testing.assert_array_equal(restored.to_model(z), m)


def test_unit_vectors_get_a_sphere_chart():
    """Vectors of one norm: D - 1 chart coordinates, exact round trip, and any point of the chart
    maps back onto the sphere."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 8)) + np.array([3.0, 0, 0, 1, 0, 0, 0, 0])
    z = 2.0 * z / np.linalg.norm(z, axis=1, keepdims=True)
    pre = fit_preprocessing(z.astype(np.float32), z[:40].astype(np.float32))
    assert pre.radius == pytest.approx(2.0, rel=1e-6) and pre.dims == 7
    assert abs(pre.basis.T @ pre.centre).max() < 1e-12
    np.testing.assert_allclose(pre.basis.T @ pre.basis, np.eye(7), atol=1e-12)
    m = pre.to_model(z)
    assert m.shape == (400, 7)
    np.testing.assert_allclose(pre.from_model(m), z, atol=1e-9)
    anywhere = pre.from_model(rng.normal(size=(100, 7)) * 3)
    np.testing.assert_allclose(np.linalg.norm(anywhere, axis=1), pre.radius, rtol=1e-12)
    # norms that differ by more than the tolerance: no chart
    assert fit_preprocessing(z * rng.uniform(0.9, 1.1, (400, 1)), z[:40]).radius == 0
    # a vector at the pole has no chart coordinates: refused, not mapped to infinity
    with pytest.raises(StageError, match="pole of the sphere chart"):
        fit_preprocessing(np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.6, -0.8, 0]]),
                                np.array([[-1.0, 0, 0]]))


# ---------------------------------------------------------------- densities with known answers
def fit(name: str, train: np.ndarray, tmp_path: Path, epochs: int) -> tuple[Flow, Preprocessing]:
    """The stage's own training loop on a train split; the best epoch's flow."""
    run, config = stage_settings(
        "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", "256",
        "--learning-rate", "3e-3", "--hidden", "64", "--realnvp-layers", "6", "--maf-layers", "4",
        "--nsf-layers", "4")
    pre = fit_preprocessing(train, train[:10])
    x = torch.from_numpy(pre.to_model(train).astype(np.float32))
    fit_idx, val_idx = flows.split_train(len(x), run)
    state = flows.fit_flow(name, "synthetic", "-", x[fit_idx], x[val_idx], pre,
                           tmp_path / f"{name}.pt", run, config, RunLog(None, {}))
    flow = build_flow(name, pre.dims, config, run.seed)
    flow.load_state_dict(state["best_state"])
    return flow, pre


def model_nll(flow: Flow, pre: Preprocessing, test: np.ndarray) -> float:
    return mean_nll(flow, torch.from_numpy(pre.to_model(test).astype(np.float32)))


@pytest.mark.parametrize("name", NAMES)
def test_flow_fits_a_known_gaussian(name, tmp_path):
    """Test NLL within 0.05 nats/dim of the true density's, in the same standardised space."""
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(4, 4))
    cov = factor @ factor.T + 0.3 * np.eye(4)
    truth = scipy.stats.multivariate_normal(np.array([1.0, -2.0, 0.5, 3.0]), cov)
    train, test = truth.rvs(4000, random_state=1), truth.rvs(3000, random_state=2)
    flow, pre = fit(name, train, tmp_path, epochs=12)
    # standardising divides by std: log p_model-space = log p_x + sum(log std)
    true_nll = -(truth.logpdf(test).mean() + np.log(pre.std).sum()) / 4
    assert model_nll(flow, pre, test) == pytest.approx(true_nll, abs=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_flow_beats_a_gaussian_on_two_moons(name, tmp_path):
    train, _ = make_moons(3000, noise=0.05, random_state=0)
    test, _ = make_moons(2000, noise=0.05, random_state=1)
    flow, pre = fit(name, train, tmp_path, epochs=15)
    gaussian = gaussian_nll(pre.to_model(train), pre.to_model(test))
    # measured: 0.44 (MAF) to 0.75 (NSF) nats/dim better after 15 epochs
    assert model_nll(flow, pre, test) < gaussian - 0.3


# ---------------------------------------------------------------- the stage on digits
def write_embeddings(data_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Digits embeddings in the stage-1 format: PCA-12 of the pixels, and the same vectors
    L2-normalised (as the triplet encoder writes them)."""
    data = load_dataset("digits")
    pixels_train = data.x_train.reshape(len(data.x_train), -1) / 255.0
    pca = PCA(12, random_state=0).fit(pixels_train)
    z_train = pca.transform(pixels_train).astype(np.float32)
    z_test = pca.transform(data.x_test.reshape(len(data.x_test), -1) / 255.0).astype(np.float32)
    files = {"pca": (z_train, z_test),
             "unit": tuple((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
                           for z in (z_train, z_test))}
    out = {}
    for name, (a, b) in files.items():
        arrays = {"z_train": a, "y_train": data.y_train, "z_test": b, "y_test": data.y_test}
        save_npz(data_dir / "embeddings" / f"digits_{name}.npz", arrays,
                 make_meta("tests/test_flows.py", {}, "digits", 0, encoder=name))
        out[name] = arrays
    return out


QUICK = ["--dataset", "digits", "--epochs", "3", "--gmm-components", "4", "--samples", "600",
         "--hidden", "32", "--realnvp-layers", "4", "--maf-layers", "3", "--nsf-layers", "3"]
QUICK_CONFIG = FlowConfig(hidden=32, realnvp_layers=4, maf_layers=3, nsf_layers=3)


def run_stage(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_script("flows.py", "--data-dir", str(data_dir), *QUICK, *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def run_main(data_dir: Path, *args: str) -> None:
    """The stage in this process, as `python flows.py ...` would run."""
    flows.main(["--data-dir", str(data_dir), *QUICK, *args])


def test_stage_writes_valid_files_that_evaluate_reads(tmp_path):
    inputs = write_embeddings(tmp_path)
    result = run_stage(tmp_path, "--encoders", "pca,unit")
    emb = tmp_path / "embeddings"
    for enc, dims in (("pca", 12), ("unit", 11)):
        source = inputs[enc]
        for name in NAMES:
            refined = load_embeddings(emb / f"digits_{enc}+{name}.npz")
            assert refined["z_train"].shape == (1347, dims) and refined["z_test"].shape == (450,
                                                                                           dims)
            assert refined["z_train"].dtype == np.float32
            np.testing.assert_array_equal(refined["y_test"], source["y_test"])
            meta = refined["meta"]
            assert meta["source_embeddings"] == f"digits_{enc}.npz" and meta["flow"] == name
            assert meta["results"]["epochs_run"] == 3 and meta["seed"] == 0
            # the written coordinates are the best epoch's flow applied to the standardised input
            ckpt = load_checkpoint(tmp_path / "checkpoints" / "flows" / f"digits_{enc}+{name}.pt")
            pre = Preprocessing.from_state(ckpt["preprocessing"])
            flow = build_flow(name, dims, QUICK_CONFIG)
            flow.load_state_dict(ckpt["best_state"])
            x_test = torch.from_numpy(pre.to_model(source["z_test"]).astype(np.float32))
            expected = to_base(flow, x_test)
            np.testing.assert_allclose(refined["z_test"], expected, atol=1e-5)
            # the checkpoint alone rebuilds the same flow and preprocessing
            rebuilt, rebuilt_pre = flow_models.from_checkpoint(
                tmp_path / "checkpoints" / "flows" / f"digits_{enc}+{name}.pt")
            np.testing.assert_array_equal(rebuilt_pre.to_model(source["z_test"]),
                                          pre.to_model(source["z_test"]))
            np.testing.assert_array_equal(to_base(rebuilt, x_test), expected)
            generated = load_npz(emb / f"digits_{enc}+{name}.gen.npz", GENERATED_EMBEDDING_KEYS)
            z_gen = generated["z_gen"]
            assert z_gen.shape == (600, 12) and z_gen.dtype == np.float32
            assert generated["meta"]["source_embeddings"] == f"digits_{enc}.npz"
            # mapped back to the embedding space: the train statistics, and the sphere for unit
            spread = source["z_train"].std(0)
            assert np.all(np.abs(z_gen.mean(0) - source["z_train"].mean(0)) < 0.3 * spread)
            assert np.all((z_gen.std(0) > 0.6 * spread) & (z_gen.std(0) < 1.6 * spread))
            if enc == "unit":
                np.testing.assert_allclose(np.linalg.norm(z_gen, axis=1), 1.0, atol=1e-5)
    table = (tmp_path / "results" / "flows_digits.md").read_text()
    assert table.count("| pca+") == 3 and table.count("| unit+") == 3
    assert "11 (sphere chart)" in table and "on a sphere of radius 1" in result.stdout
    assert (tmp_path / "visualizations" / "flows_digits_pca_nll.png").stat().st_size > 0
    evaluation = subprocess.run(
        [sys.executable, "evaluate.py", "--data-dir", str(tmp_path), "--stages",
         "embeddings,plan2", "--no-plots", "--baseline-components", "0",
         "--kmeans-init", "1", "--silhouette-samples", "200", "--files", "*pca*"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert evaluation.returncode == 0, evaluation.stderr
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert not metrics["skipped"]
    assert {f"pca+{n}" for n in NAMES} <= set(metrics["embeddings"]["digits"])
    for name in NAMES:
        values = metrics["plan2"]["digits"][f"pca+{name}"]
        assert values["source_embeddings"] == "digits_pca.npz" and values["n_generated"] == 600


def run_main_patched(data_dir: Path, monkeypatch, patch, *args: str) -> None:
    """run_main with patch(module) applied first (patch monkeypatches functions, not
    settings)."""
    patch(flows)
    run_main(data_dir, *args)


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    write_embeddings(tmp_path / "straight")
    write_embeddings(tmp_path / "resumed")
    args = ("--encoders", "pca", "--flows", "nsf,maf", "--epochs", "4")
    run_main(tmp_path / "straight", *args)

    def interrupt_at_epoch_3(module):
        original = module.train_epoch

        def interrupted(flow, optimizer, x, epoch, label, train):
            if epoch == 3:
                raise KeyboardInterrupt
            return original(flow, optimizer, x, epoch, label, train)

        monkeypatch.setattr(module, "train_epoch", interrupted)

    with pytest.raises(KeyboardInterrupt):
        run_main_patched(tmp_path / "resumed", monkeypatch, interrupt_at_epoch_3, *args)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "flows" / "digits_pca+nsf.pt")
    assert ckpt["epoch"] == 2
    capsys.readouterr()
    run_main(tmp_path / "resumed", *args)
    assert "pca+nsf: resuming from" in capsys.readouterr().out
    for name in ("nsf", "maf"):
        a = load_embeddings(tmp_path / "straight" / "embeddings" / f"digits_pca+{name}.npz")
        b = load_embeddings(tmp_path / "resumed" / "embeddings" / f"digits_pca+{name}.npz")
        np.testing.assert_allclose(a["z_test"], b["z_test"], atol=1e-5)
        ga = load_npz(tmp_path / "straight" / "embeddings" / f"digits_pca+{name}.gen.npz", {})
        gb = load_npz(tmp_path / "resumed" / "embeddings" / f"digits_pca+{name}.gen.npz", {})
        np.testing.assert_allclose(ga["z_gen"], gb["z_gen"], atol=1e-4)


def test_resume_reports_and_refuses_other_settings(tmp_path, capsys):
    write_embeddings(tmp_path)
    args = ("--encoders", "pca", "--flows", "realnvp", "--lr-schedule", "constant")
    run_main(tmp_path, *args, "--epochs", "1")
    run_main(tmp_path, *args, "--epochs", "2")  # a constant rate: more epochs continue the run
    assert "continuing at epoch 2/2" in capsys.readouterr().out
    with pytest.raises(StageError, match="hidden: now 16, checkpoint 32"):
        run_main(tmp_path, *args, "--hidden", "16")
    # a cosine schedule is shaped by the number of epochs: another number is another run
    with pytest.raises(StageError, match="lr_schedule: now 'cosine', checkpoint None, epochs: "
                                         "now 3, checkpoint None"):
        run_main(tmp_path, "--encoders", "pca", "--flows", "realnvp")
    # new stage-1 embeddings under the same name: the old flow no longer belongs to them
    arrays = load_embeddings(tmp_path / "embeddings" / "digits_pca.npz")
    arrays["z_train"] = arrays["z_train"] * 2
    save_npz(tmp_path / "embeddings" / "digits_pca.npz",
             {k: arrays[k] for k in ("z_train", "y_train", "z_test", "y_test")}, {})
    with pytest.raises(StageError, match="embeddings_sha256: now"):
        run_main(tmp_path, *args, "--epochs", "2")


def test_cosine_schedule_runs_from_the_rate_to_zero():
    run, _ = stage_settings("--learning-rate", "2e-3", "--lr-schedule", "cosine")
    rates = [flows.learning_rate_at(step, 100, run) for step in range(101)]
    assert rates[0] == 2e-3 and rates[50] == pytest.approx(1e-3) and rates[100] == 0.0
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    constant = dataclasses.replace(run, lr_schedule="constant")
    assert flows.learning_rate_at(99, 100, constant) == 2e-3


def test_early_stopping_keeps_the_best_epoch(tmp_path, monkeypatch):
    write_embeddings(tmp_path)
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0])

    def script_validation(module):
        """Inside fit_flow (and only there: main's test NLL stays real), mean_nll is the
        validation NLL: script it."""
        original = module.fit_flow

        def scripted_fit(*args, **kwargs):
            with monkeypatch.context() as inside:
                inside.setattr(module, "mean_nll", lambda flow, x: next(scripted))
                return original(*args, **kwargs)

        monkeypatch.setattr(module, "fit_flow", scripted_fit)

    run_main_patched(tmp_path, monkeypatch, script_validation,
                     "--encoders", "pca", "--flows", "realnvp", "--epochs", "20",
                     "--patience", "3")
    assert flows.mean_nll is mean_nll  # the scripted validation NLL is gone again
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "flows" / "digits_pca+realnvp.pt")
    assert ckpt["epoch"] == 6 and ckpt["best_epoch"] == 3 and ckpt["stopped_early"]
    assert ckpt["val_nll"] == [5.0, 4.0, 3.0, 3.5, 3.2, 3.1]
    assert any(not torch.equal(ckpt["best_state"][k], ckpt["flow_state"][k])
               for k in ckpt["best_state"])
    meta = load_embeddings(tmp_path / "embeddings" / "digits_pca+realnvp.npz")["meta"]
    assert meta["results"]["best_epoch"] == 3 and meta["results"]["epochs_run"] == 6
    best = build_flow("realnvp", 12, QUICK_CONFIG)  # the flow of the run's settings
    best.load_state_dict(ckpt["best_state"])
    pre = Preprocessing.from_state(ckpt["preprocessing"])
    source = load_embeddings(tmp_path / "embeddings" / "digits_pca.npz")
    x_test = torch.from_numpy(pre.to_model(source["z_test"]).astype(np.float32))
    assert meta["results"]["test_nll"] == pytest.approx(mean_nll(best, x_test), abs=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    write_embeddings(tmp_path)
    args = ("--encoders", "pca", "--flows", "nsf", "--lr-schedule", "constant")
    run_main(tmp_path, *args, "--epochs", "1")
    ckpt = tmp_path / "checkpoints" / "flows" / "digits_pca+nsf.pt"
    good = ckpt.read_bytes()
    refined = (tmp_path / "embeddings" / "digits_pca+nsf.npz").read_bytes()

    def poison(module):
        original = module.Flow.log_prob
        monkeypatch.setattr(module.Flow, "log_prob",
                            lambda self, x: original(self, x) * float("nan"))

    with pytest.raises(StageError, match="loss became nan at epoch 2"):
        run_main_patched(tmp_path, monkeypatch, poison, *args, "--epochs", "2")
    assert ckpt.read_bytes() == good
    assert (tmp_path / "embeddings" / "digits_pca+nsf.npz").read_bytes() == refined


def test_bad_embedding_files_are_refused_naming_file_and_column(tmp_path):
    inputs = write_embeddings(tmp_path)
    arrays = dict(inputs["pca"])
    constant = arrays["z_train"].copy()
    constant[:, 3] = 0.25
    save_npz(tmp_path / "embeddings" / "digits_flat.npz", {**arrays, "z_train": constant}, {})
    with pytest.raises(StageError, match=r"digits_flat\.npz: column 3 of z_train is constant"):
        run_main(tmp_path, "--encoders", "pca,flat")
    broken = arrays["z_test"].copy()
    broken[7, 5] = np.inf
    np.savez(tmp_path / "embeddings" / "digits_inf.npz", **{**arrays, "z_test": broken})
    with pytest.raises(StageError, match=r"digits_inf\.npz: column 5 of z_test holds 1 NaN or "
                                         r"infinite"):
        run_main(tmp_path, "--encoders", "inf")
    save_npz(tmp_path / "embeddings" / "digits_other.npz", arrays, {"dataset": "mnist"})
    with pytest.raises(StageError, match=r"digits_other\.npz: its meta says dataset 'mnist', "
                                         r"not 'digits'"):
        run_main(tmp_path, "--encoders", "other")
    with pytest.raises(StageError, match=r"--knn-k 100000: .*digits_pca\.npz holds only"):
        run_main(tmp_path, "--encoders", "pca", "--knn-k", "100000")
    for name, label in (("minus", -1), ("eleven", 11), ("million", 10**6)):
        labels = arrays["y_train"].copy()
        labels[4] = label
        save_npz(tmp_path / "embeddings" / f"digits_{name}.npz", {**arrays, "y_train": labels},
                 {})
        with pytest.raises(StageError, match=rf"digits_{name}\.npz: y_train spans \[.*\], not "
                                             r"class indices of digits \(0\.\.9\)"):
            run_main(tmp_path, "--encoders", name)
    save_npz(tmp_path / "embeddings" / "digits_empty.npz",
             {**arrays, "z_train": arrays["z_train"][:0], "y_train": arrays["y_train"][:0]}, {})
    with pytest.raises(StageError, match=r"digits_empty\.npz: holds no train embeddings"):
        run_main(tmp_path, "--encoders", "empty")
    assert not list((tmp_path / "embeddings").glob("*+*"))  # refused before any training


def test_missing_stage1_file_names_it_and_the_command_that_makes_it(tmp_path):
    result = run_stage(tmp_path, "--encoders", "vae", check=False)
    path = tmp_path / "embeddings" / "digits_vae.npz"
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {path} not found; make it with: python encoder_models.py --dataset digits "
        f"--models vae --data-dir {tmp_path} (or leave vae out of --encoders)")


def test_unknown_flow_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_main(tmp_path, "--flows", "nsf,glow")
    assert stopped.value.code == 2
    assert "--flows glow: must be one of realnvp, maf, nsf" in capsys.readouterr().err
