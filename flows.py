"""Stage 2: normalizing flows that refine the embeddings.

For each stage-1 embedding data/embeddings/<ds>_<enc>.npz and each flow named in --flows
(RealNVP, MAF, rational-quadratic neural spline flow), fit the flow by maximum likelihood to the
train split, standardised with its own statistics (a held-out part of it picks the best epoch),
with a checkpoint every epoch (resumed after an interruption). Then write
data/embeddings/<ds>_<enc>+<flow>.npz (the base-space coordinates of the train and test
embeddings), data/embeddings/<ds>_<enc>+<flow>.gen.npz (samples mapped back to the embedding
space), learning curves in data/visualizations/, and data/results/flows_<ds>.md: test NLL per
dimension beside a full-covariance Gaussian and a Gaussian mixture fitted to the same train split,
and the k-NN accuracy of each refined embedding beside the original's.

Embeddings whose vectors all have one norm (the triplet encoder's unit vectors) lie on a sphere,
where a flow on the full space can push the likelihood towards infinity: they are modelled in
stereographic coordinates of the sphere (one dimension fewer), and samples map back onto it.

    python flows.py --dataset digits --encoders ae_basic --flows realnvp,nsf --epochs 5
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataio.artifacts import (
    check_settings_match,
    ensure_output_dir,
    fingerprint,
    hold_output_lock,
    holds_output_locks,
    load_checkpoint,
    load_embeddings,
    load_meta,
    load_npz,
    make_meta,
    remake_hint,
    save_checkpoint,
    save_figure,
    save_npz,
    tagged,
    write_text,
)
from dataio.data_sources import resolve_embedded_dataset
from evaluation.metrics import knn_accuracy
from models.encoders import ENCODER_NAMES
from models.flow_models import (
    FLOW_NAMES,
    LAYER_FIELDS,
    Flow,
    FlowConfig,
    Preprocessing,
    architecture,
    build_flow,
    draw_samples,
    fit_preprocessing,
    gaussian_nll,
    mean_nll,
    mixture_nll,
    to_base,
)
from reporting.tagged_runs import VARIANT_COLUMN, variant_notes
from runtime.settings import check_input_tag, configure, pick
from runtime.stage import (
    StageError,
    limit_cpu_threads,
    pick_device,
    require_finite,
    run_stage,
    seed_everything,
)
from runtime.tracking import RunLog, open_run_log

# Tables (not settings): the learning-rate schedules there are, and the encoders stage 1
# trains by default (any other name of a stage-1 file works too).
LR_SCHEDULES = ("constant", "cosine")
STAGE1_ENCODERS = ENCODER_NAMES

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # embeddings' dataset: a built-in, folder:PATH or a folder set's name
DATA_DIR = "data"  # where data/embeddings/<ds>_<enc>.npz are read and every output is written
ENCODERS = STAGE1_ENCODERS  # stage-1 embeddings <ds>_<enc>.npz to refine, by encoder
FLOWS = FLOW_NAMES  # flows fitted to each embedding [in FLOW_NAMES]
EPOCHS = 30  # most epochs per flow (early stopping may end sooner) [>= 1]
PATIENCE = 10  # stop after this many epochs without a better validation NLL [>= 1]
BATCH_SIZE = 512  # vectors per optimiser step [>= 2]
LEARNING_RATE = 2e-3  # Adam learning rate (the starting rate with --lr-schedule cosine) [> 0]
LR_SCHEDULE = "cosine"  # constant, or cosine: down to 0 over --epochs [in LR_SCHEDULES]
WEIGHT_DECAY = 0.0  # Adam weight decay [>= 0]
GRAD_CLIP = 10.0  # largest gradient norm per step (0: no clipping) [>= 0]
VALIDATION_FRACTION = 0.1  # share of the train split held out for the validation NLL [> 0, < 1]
LIMIT = 0  # use the first N training embeddings only (0: all) [>= 0]
HIDDEN = 256  # width of the hidden layers of every conditioner network [>= 1, <= 8192]
REALNVP_LAYERS = 8  # affine coupling layers of RealNVP [>= 1]
MAF_LAYERS = 5  # MADE layers of MAF [>= 1]
NSF_LAYERS = 6  # rational-quadratic coupling layers of the neural spline flow [>= 1]
NSF_BINS = 8  # spline bins per dimension [>= 2]
NSF_TAIL_BOUND = 4.0  # the splines act on [-B, B] (standardised units), identity outside [> 0]
SCALE_BOUND = 3.0  # affine log-scales are soft-clamped to (-c, c): c tanh(s / c) [> 0]
GMM_COMPONENTS = 20  # components of the full-covariance Gaussian-mixture baseline [>= 1]
KNN_K = 5  # neighbours of the k-NN accuracy of original and refined embeddings [>= 1]
SAMPLES = 10000  # samples per flow written to <ds>_<enc>+<flow>.gen.npz [>= 1, <= 1000000]
SEED = 0  # seeds the split, the weights, the batch order, the mixture and the samples [seed]
TAG = ""  # a variant's name: outputs <ds>_<enc>+<flow>@TAG beside the untagged ("": none) [tag]
INPUT_TAG = ""  # refine the embeddings <ds>_<enc>@INPUT_TAG.npz ("": the untagged ones) [tag]
TENSORBOARD = True  # log each epoch's train and validation NLL to <data-dir>/runs/flows/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings

# A column whose standard deviation is below this share of its scale counts as constant.
CONSTANT_COLUMN_TOLERANCE = 1e-6
# Training NLL is read back (one host sync) every this many steps.
LOG_EVERY = 20
# Vectors of the fitting part that initialise ActNorm (a seeded random subset).
ACTNORM_INIT_SIZE = 4096
CHECKPOINT_KEYS = ("flow_state", "optimizer", "epoch", "train_nll", "val_nll", "seconds",
                   "best_epoch", "best_val_nll", "best_state", "stopped_early", "settings")


@dataclass(frozen=True)
class FlowTraining:
    """What this run fits, how, and what it writes (the flows' own hyper-parameters:
    FlowConfig)."""

    dataset: str
    data_dir: str
    encoders: tuple[str, ...]
    flows: tuple[str, ...]
    epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    weight_decay: float
    grad_clip: float
    validation_fraction: float
    limit: int
    gmm_components: int
    knn_k: int
    samples: int
    seed: int
    deterministic: bool
    tag: str
    input_tag: str


# ---------------------------------------------------------------- inputs
def stage1_path(encoder: str, train: FlowTraining) -> Path:
    return (Path(train.data_dir) / "embeddings"
            / f"{tagged(f'{train.dataset}_{encoder}', train.input_tag)}.npz")


def check_columns(path: Path, key: str, z: np.ndarray) -> None:
    """Refuse no rows at all, or a column that holds NaN or infinite values or is constant,
    naming it."""
    if not len(z):
        raise StageError(f"{path}: holds no {key.removeprefix('z_')} embeddings (0 rows)")
    finite = np.isfinite(z)
    if not finite.all():
        column = int(np.flatnonzero(~finite.all(axis=0))[0])
        bad = int((~finite[:, column]).sum())
        raise StageError(f"{path}: column {column} of {key} holds {bad} NaN or infinite "
                         f"value(s); refit the encoder that wrote it")
    values = z.astype(np.float64)
    spread = values.std(axis=0)
    scale = np.maximum(np.abs(values).max(axis=0), 1.0)
    constant = np.flatnonzero(spread <= CONSTANT_COLUMN_TOLERANCE * scale)
    if key == "z_train" and len(constant):
        raise StageError(f"{path}: column {int(constant[0])} of z_train is constant "
                         f"({values[0, constant[0]]:.6g} in every row): no density to fit, and "
                         f"standardisation would divide by zero")


def load_stage1(encoder: str, train: FlowTraining) -> dict[str, Any]:
    """A checked stage-1 embedding file; its train split cut to --limit."""
    path = stage1_path(encoder, train)
    limit = train.limit
    command = (f"python encoder_models.py --dataset {train.dataset} --models {encoder} "
               f"--data-dir {train.data_dir}"
               + (f" --tag {train.input_tag}" if train.input_tag else ""))
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: {command} (or leave {encoder} out "
                         f"of --encoders)")
    with remake_hint(command):
        raw = load_npz(path, {})  # readable; its arrays are checked below, by column first
        for key in ("z_train", "z_test"):
            if key in raw and raw[key].ndim == 2 and raw[key].dtype.kind == "f":
                check_columns(path, key,
                              raw[key][:limit or None] if key == "z_train" else raw[key])
        data = load_embeddings(path, train.dataset)
    if limit:
        data["z_train"], data["y_train"] = data["z_train"][:limit], data["y_train"][:limit]
    data["path"] = path
    data["fingerprint"] = fingerprint(data["z_train"])
    return data


# ---------------------------------------------------------------- training
def resume_settings(encoder: str, flow_name: str, embeddings_hash: str, train: FlowTraining,
                    config: FlowConfig) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued."""
    settings = {"dataset": train.dataset, "encoder": encoder, "flow": flow_name,
                "embeddings_sha256": embeddings_hash, "limit": train.limit,
                "batch_size": train.batch_size, "learning_rate": train.learning_rate,
                "weight_decay": train.weight_decay, "grad_clip": train.grad_clip,
                "validation_fraction": train.validation_fraction, "hidden": config.hidden,
                "layers": getattr(config, LAYER_FIELDS[flow_name]),
                "scale_bound": config.scale_bound, "seed": train.seed}
    if flow_name == "nsf":
        settings.update(nsf_bins=config.nsf_bins, nsf_tail_bound=config.nsf_tail_bound)
    if train.lr_schedule != "constant":  # the schedule's shape depends on the number of epochs
        settings.update(lr_schedule=train.lr_schedule, epochs=train.epochs)
    return settings


def learning_rate_at(step: int, total_steps: int, train: FlowTraining) -> float:
    """The rate of optimiser step ``step`` (0-based) of ``total_steps``: the learning rate, or
    with the cosine schedule (Loshchilov & Hutter 2017, no restarts)
    rate * (1 + cos(pi * step / total_steps)) / 2."""
    if train.lr_schedule == "constant":
        return train.learning_rate
    return train.learning_rate * (1 + math.cos(math.pi * min(step / total_steps, 1.0))) / 2


def split_train(n: int, train: FlowTraining) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices of the fitting and validation parts of the train split."""
    order = np.random.default_rng(train.seed).permutation(n)
    held_out = max(1, round(train.validation_fraction * n))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def train_epoch(flow: Flow, optimizer: torch.optim.Optimizer, x: torch.Tensor, epoch: int,
                label: str, train: FlowTraining) -> float:
    """One pass over x in a seeded order; returns the mean NLL per dimension. The running NLL is
    read back every LOG_EVERY steps (no per-step host sync); a non-finite value stops training."""
    flow.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
        train.seed * 100_003 + epoch)).to(x.device)
    steps = list(order.split(train.batch_size))
    total, seen = torch.zeros((), device=x.device), 0
    bar = tqdm(steps, desc=f"{label} epoch {epoch}/{train.epochs}", leave=False, disable=None)
    for step, idx in enumerate(bar, start=1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at((epoch - 1) * len(steps) + step - 1,
                                           train.epochs * len(steps), train)
        loss = -flow.log_prob(x[idx]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(flow.parameters(), train.grad_clip)
        optimizer.step()
        total, seen = total + loss.detach() * len(idx), seen + len(idx)
        if step % LOG_EVERY == 0 or step == len(steps):
            value = float(total) / seen / flow.dim
            if not math.isfinite(value):
                raise StageError(f"{label}: loss became {value} at epoch {epoch}; stopped, and "
                                 "the last good checkpoint is kept (try a lower "
                                 "--learning-rate or --scale-bound)")
            bar.set_postfix(nll_per_dim=f"{value:.4f}")
    return float(total) / seen / flow.dim


def fit_flow(name: str, encoder: str, embeddings_hash: str, x_fit: torch.Tensor,
             x_val: torch.Tensor, preprocessing: Preprocessing, ckpt: Path,
             train: FlowTraining, config: FlowConfig, log: RunLog) -> dict[str, Any]:
    """Train (or resume) one flow with early stopping, each epoch's NLLs in ``log``; returns
    the checkpoint dict whose ``best_state`` holds the weights of the best validation epoch."""
    label = f"{encoder}+{name}"
    settings = resume_settings(encoder, name, embeddings_hash, train, config)
    seed_everything(train.seed, train.deterministic)
    flow = build_flow(name, x_fit.shape[1], config, train.seed).to(x_fit.device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=train.learning_rate,
                                 weight_decay=train.weight_decay)
    epochs = train.epochs
    if ckpt.exists():
        state = load_checkpoint(ckpt, map_location=x_fit.device, required=CHECKPOINT_KEYS)
        check_settings_match(ckpt, state["settings"], settings)
        try:
            flow.load_state_dict(state["flow_state"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise StageError(f"{ckpt} holds weights of another architecture; delete it to start "
                             f"again ({str(err).splitlines()[0]})") from err
        done = int(state["epoch"])
        print(f"{label}: resuming from {ckpt} after epoch {done}"
              + ("; it had stopped early" if state["stopped_early"] else
                 f", continuing at epoch {done + 1}/{epochs}" if done < epochs else
                 f"; {epochs} epoch(s) asked for, so no training"))
    else:
        chosen = torch.randperm(len(x_fit), generator=torch.Generator().manual_seed(train.seed))
        flow.initialize(x_fit[chosen[:ACTNORM_INIT_SIZE].to(x_fit.device)])
        state = {"epoch": 0, "train_nll": [], "val_nll": [], "seconds": [], "best_epoch": 0,
                 "best_val_nll": math.inf, "best_state": None, "stopped_early": False}
    while state["epoch"] < epochs and not state["stopped_early"]:
        epoch = state["epoch"] + 1
        started = time.time()
        train_nll = train_epoch(flow, optimizer, x_fit, epoch, label, train)
        # A finite loss before the last step does not make finite weights: check them too.
        for key, value in flow.state_dict().items():
            require_finite(value, f"{label}: {key} after epoch {epoch} (training diverged; "
                           "the last good checkpoint is kept; try a lower --learning-rate)")
        val_nll = mean_nll(flow, x_val)
        if not math.isfinite(val_nll):
            raise StageError(f"{label}: validation NLL became {val_nll} at epoch {epoch}; "
                             "stopped, and the last good checkpoint is kept")
        seconds = time.time() - started
        state["train_nll"].append(train_nll)
        state["val_nll"].append(val_nll)
        state["seconds"].append(seconds)
        state["epoch"] = epoch
        if val_nll < state["best_val_nll"]:
            state["best_val_nll"], state["best_epoch"] = val_nll, epoch
            state["best_state"] = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        elif epoch - state["best_epoch"] >= train.patience:
            state["stopped_early"] = True
        state.update(flow_state=flow.state_dict(), optimizer=optimizer.state_dict(),
                     settings=settings, preprocessing=preprocessing.state(), flow=name,
                     encoder=encoder, dims=flow.dim,
                     architecture=architecture(name, flow.dim, config))
        save_checkpoint(ckpt, state)
        log.scalars({"train_nll": train_nll, "validation_nll": val_nll, "seconds": seconds},
                    epoch, "epochs/")
        print(f"{label}: epoch {epoch}/{epochs} train NLL {train_nll:.4f}, validation NLL "
              f"{val_nll:.4f} nats/dim ({seconds:.1f} s)"
              + (f"; no better than epoch {state['best_epoch']} for {train.patience} epochs, "
                 "stopping" if state["stopped_early"] else ""), flush=True)
    if state["best_state"] is None:
        raise StageError(f"{ckpt} holds no trained epoch; delete it to start again")
    return state


# ---------------------------------------------------------------- outputs
def learning_curves(histories: dict[str, dict[str, Any]], baselines: dict[str, float],
                    title: str) -> Any:
    """Train and validation NLL per epoch of each flow, with the baselines' test NLL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for i, (name, state) in enumerate(histories.items()):
        epochs = np.arange(1, len(state["train_nll"]) + 1)
        colour = f"C{i}"
        axis.plot(epochs, state["train_nll"], color=colour, alpha=0.5, linestyle="--",
                  label=f"{name} train")
        axis.plot(epochs, state["val_nll"], color=colour, label=f"{name} validation")
        axis.plot([state["best_epoch"]], [state["best_val_nll"]], "o", color=colour)
    for style, (label, value) in zip((":", "-."), baselines.items(), strict=True):
        axis.axhline(value, color="0.3", linestyle=style, label=f"{label} (test)")
    axis.plot([], [], "o", color="0.3", label="best epoch (kept)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("NLL, nats per dimension (standardised)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, ncol=2)
    return figure


RESULT_COLUMNS = ("embedding+flow", VARIANT_COLUMN, "dims", "test NLL",
                  "Gaussian", "mixture (components)", "gain over Gaussian", "gain over mixture",
                  "k-NN original (k)", "k-NN refined",
                  "best epoch / run", "s per epoch")


def result_row(name: str, meta: dict[str, Any], note: str) -> list[str]:
    """The table row of the refined embedding ``<ds>_<name>.npz`` whose meta is ``meta``;
    ``note``: how a tagged run's settings differ from the untagged one's."""
    r = dict(meta["results"])
    for key, setting in (("mixture_components", "gmm_components"), ("knn_k", "knn_k")):
        r.setdefault(key, meta.get("settings", {}).get(setting))  # the run's own settings
    return [name, note, str(r["dims"]) + (" (sphere chart)"
            if r["sphere_radius"] else ""), f"{r['test_nll']:.3f}", f"{r['gaussian_nll']:.3f}",
            f"{r['mixture_nll']:.3f} ({r['mixture_components']})",
            f"{r['gaussian_nll'] - r['test_nll']:+.3f}", f"{r['mixture_nll'] - r['test_nll']:+.3f}",
            f"{r['knn_original']:.4f} ({r['knn_k']})",
            f"{r['knn_refined']:.4f}", f"{r['best_epoch']} / {r['epochs_run']}",
            f"{r['seconds_per_epoch']:.1f}"]


def results_markdown(metas: dict[str, dict[str, Any]], dataset: str) -> str:
    """The table of every refined embedding of the dataset found on disk; each row states what
    it was made with (rows may come from runs of other settings; each file's meta holds all)."""
    lines = [f"# Flows on {dataset} embeddings", "",
             "Written by `flows.py` from the `meta` of every `" + dataset + "_<enc>+<flow>.npz` in "
             "the embeddings folder (each row from its own run; that file's meta holds the run's "
             "settings). NLL: test split, nats per dimension, in the standardised model space "
             "(vectors of one norm: stereographic chart coordinates), lower is better; the "
             "Gaussian (full covariance) and the full-covariance mixture (its components in "
             "brackets) were fitted to the same train split in the row's run. Gain = baseline "
             "NLL - flow NLL. k-NN (its k in brackets): fitted on train, test accuracy, original "
             "embedding beside the refined one (base-space coordinates). A tagged run "
             "(`--tag`, `<enc>+<flow>@<tag>`) is its own row, with the settings in which it "
             "differs from the untagged run of the same embedding and flow.", "",
             "| " + " | ".join(RESULT_COLUMNS) + " |", "| --- " * len(RESULT_COLUMNS) + "|"]
    notes = variant_notes({name: meta.get("settings", {}) for name, meta in metas.items()})
    lines += ["| " + " | ".join(result_row(name, meta, notes[name])) + " |"
              for name, meta in metas.items()]
    return "\n".join(lines) + "\n"


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    # A folder data set may be named as its embeddings are (their meta holds its path).
    values = resolve_embedded_dataset(values, values["encoders"])
    train = pick(FlowTraining, values)
    check_input_tag(train.tag, train.input_tag)
    config = pick(FlowConfig, values)
    root = Path(train.data_dir)
    limit_cpu_threads(values["threads"])
    device = pick_device(values["device"])
    # every check up front
    inputs = {encoder: load_stage1(encoder, train) for encoder in train.encoders}
    for data in inputs.values():
        if train.knn_k > len(data["z_train"]):
            raise StageError(f"--knn-k {train.knn_k}: {data['path']} holds only "
                             f"{len(data['z_train'])} training embeddings (--limit {train.limit})")
        if len(data["z_train"]) < max(2 * train.gmm_components, 20):
            raise StageError(f"{data['path']}: {len(data['z_train'])} training embeddings "
                             f"(--limit {train.limit}) are too few for a validation split and a "
                             f"{train.gmm_components}-component mixture")
    # Every input checked (a refused run writes nothing): one lock per embedding, so that flows
    # of other embeddings go side by side.
    for encoder in train.encoders:
        stem = tagged(f"{train.dataset}_{encoder}", train.tag)
        hold_output_lock(root / f".lock-flows-{stem}", f"flows.py, {stem}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("embeddings", "visualizations", "results", "checkpoints/flows")}
    print(f"{train.dataset}: {len(train.encoders)} embedding(s), flows {', '.join(train.flows)}; "
          f"device {device}")
    for encoder, data in inputs.items():
        z_train, z_test = data["z_train"], data["z_test"]
        pre = fit_preprocessing(z_train, z_test)
        m_train, m_test = pre.to_model(z_train), pre.to_model(z_test)
        note = (f", on a sphere of radius {pre.radius:.4g}: {pre.dims}-d chart coordinates"
                if pre.radius else "")
        print(f"{encoder}: {len(z_train)} train / {len(z_test)} test vectors, "
              f"{z_train.shape[1]}-d{note}")
        started = time.time()
        baselines = {"gaussian": gaussian_nll(m_train, m_test)}
        baselines["mixture"], mixture = mixture_nll(m_train, m_test, train.gmm_components,
                                                   train.seed)
        knn_original = knn_accuracy(z_train, data["y_train"], z_test, data["y_test"],
                                    train.knn_k)
        print(f"{encoder}: test NLL per dim: Gaussian {baselines['gaussian']:.4f}, "
              f"{train.gmm_components}-component mixture {baselines['mixture']:.4f}"
              f"{'' if mixture.converged_ else ' (EM did not converge in 200 iterations)'}; "
              f"k-NN accuracy {knn_original:.4f} ({time.time() - started:.1f} s)")
        fit_idx, val_idx = split_train(len(m_train), train)
        x_train = torch.from_numpy(m_train.astype(np.float32)).to(device)
        x_test = torch.from_numpy(m_test.astype(np.float32)).to(device)
        histories = {}
        for name in train.flows:
            stem = tagged(f"{train.dataset}_{encoder}+{name}", train.tag)
            ckpt = folders["checkpoints/flows"] / f"{stem}.pt"
            with open_run_log(values, "flows", stem) as log:
                state = fit_flow(name, encoder, data["fingerprint"],
                                 x_train[torch.from_numpy(fit_idx).to(device)],
                                 x_train[torch.from_numpy(val_idx).to(device)], pre, ckpt, train,
                                 config, log)
            histories[name] = state
            flow = build_flow(name, pre.dims, config, train.seed).to(device)
            flow.load_state_dict(state["best_state"])
            test_nll = mean_nll(flow, x_test)
            refined_train, refined_test = to_base(flow, x_train), to_base(flow, x_test)
            samples = pre.from_model(draw_samples(flow, train.samples, train.seed)).astype(
                np.float32)
            for key, array in (("refined embeddings", refined_test), ("samples", samples),
                               ("refined embeddings", refined_train)):
                if not np.isfinite(array).all() or not math.isfinite(test_nll):
                    raise StageError(f"{encoder}+{name}: the best epoch's flow gives non-finite "
                                     f"{key} or test NLL; {ckpt} is kept, nothing was written")
            knn_refined = knn_accuracy(refined_train, data["y_train"], refined_test,
                                       data["y_test"], train.knn_k)
            results = {"dims": pre.dims, "sphere_radius": pre.radius, "test_nll": test_nll,
                       "gaussian_nll": baselines["gaussian"],
                       "mixture_nll": baselines["mixture"],
                       "mixture_components": train.gmm_components,
                       "mixture_converged": bool(mixture.converged_),
                       "knn_original": knn_original, "knn_refined": knn_refined,
                       "knn_k": train.knn_k,
                       "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                       "best_val_nll": state["best_val_nll"],
                       "seconds_per_epoch": float(np.mean(state["seconds"])),
                       "n_fit": len(fit_idx), "n_val": len(val_idx), "n_test": len(z_test)}
            meta = make_meta(__file__, values, train.dataset, train.seed, encoder=encoder,
                             flow=name, source_embeddings=data["path"].name, checkpoint=str(ckpt),
                             embeddings_sha256=data["fingerprint"], results=results,
                             class_names=data["meta"].get("class_names"))
            refined = save_npz(folders["embeddings"] / f"{stem}.npz",
                               {"z_train": refined_train, "y_train": data["y_train"],
                                "z_test": refined_test, "y_test": data["y_test"]}, meta)
            generated = save_npz(folders["embeddings"] / f"{stem}.gen.npz", {"z_gen": samples},
                                 {**meta, "num_samples": len(samples)})
            print(f"{encoder}+{name}: test NLL {test_nll:.4f} nats/dim (Gaussian "
                  f"{baselines['gaussian']:.4f}, mixture {baselines['mixture']:.4f}); k-NN "
                  f"{knn_refined:.4f} (original {knn_original:.4f}); wrote {refined}, "
                  f"{generated.name}")
        figure = learning_curves(histories, {"Gaussian": baselines["gaussian"],
                                             f"{train.gmm_components}-component mixture":
                                             baselines["mixture"]},
                                 f"{train.dataset} {encoder}: flows fitted by maximum likelihood")
        png = save_figure(figure, folders["visualizations"]
                          / f"flows_{tagged(f'{train.dataset}_{encoder}', train.tag)}_nll.png")
        print(f"{encoder}: wrote {png}")
    metas = {}
    for path in sorted(folders["embeddings"].glob(f"{train.dataset}_*+*.npz")):
        if not path.name.endswith(".gen.npz"):
            try:
                meta = load_meta(path)
            except StageError as err:  # another file, broken: it is no row, this run stands
                print(f"warning: left out of the table: {err}")
                continue
            if meta.get("script") == Path(__file__).name and "results" in meta:
                metas[path.name.removesuffix(".npz").partition("_")[2]] = meta
    table = results_markdown(metas, train.dataset)
    out = write_text(folders["results"] / f"flows_{train.dataset}.md", table)
    print("\n" + table.split("\n\n", 2)[2] + f"\nwrote {out}")


if __name__ == "__main__":
    run_stage(main)
