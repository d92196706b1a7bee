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

import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import nn
from tqdm import tqdm

from artifacts import (
    check_settings_match,
    ensure_output_dir,
    load_checkpoint,
    load_embeddings,
    load_npz,
    make_meta,
    save_checkpoint,
    save_figure,
    save_npz,
    write_text,
)
from metrics import knn_accuracy
from nets import mlp
from runtime import (
    StageError,
    limit_cpu_threads,
    pick_device,
    require_finite,
    run_stage,
    seed_everything,
)
from settings import configure

# Internal tables (not settings): the flows and learning-rate schedules there are, and the
# encoders stage 1 trains by default (any other name of a stage-1 file works too).
FLOW_NAMES = ("realnvp", "maf", "nsf")
LR_SCHEDULES = ("constant", "cosine")
STAGE1_ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae", "ntxent", "triplet")

DATASET = "fashion-mnist"  # dataset whose embeddings are refined [in data_sources.DATASETS]
DATA_DIR = "data"  # where data/embeddings/<ds>_<enc>.npz are read and every output is written
ENCODERS = STAGE1_ENCODERS  # stage-1 embeddings <ds>_<enc>.npz to refine, by encoder
FLOWS = ("realnvp", "maf", "nsf")  # flows fitted to each embedding [in FLOW_NAMES]
EPOCHS = 30  # most epochs per flow (early stopping may end sooner) [>= 1]
PATIENCE = 10  # stop after this many epochs without a better validation NLL [>= 1]
BATCH_SIZE = 512  # vectors per optimiser step [>= 2]
LEARNING_RATE = 2e-3  # Adam learning rate (the starting rate with --lr-schedule cosine) [> 0]
LR_SCHEDULE = "cosine"  # constant, or cosine: down to 0 over --epochs [in LR_SCHEDULES]
WEIGHT_DECAY = 0.0  # Adam weight decay [>= 0]
GRAD_CLIP = 10.0  # largest gradient norm per step (0: no clipping) [>= 0]
VALIDATION_FRACTION = 0.1  # share of the train split held out for the validation NLL [> 0, < 1]
LIMIT = 0  # use the first N training embeddings only (0: all) [>= 0]
HIDDEN = 256  # width of the hidden layers of every conditioner network [>= 1]
REALNVP_LAYERS = 8  # affine coupling layers of RealNVP [>= 1]
MAF_LAYERS = 5  # MADE layers of MAF [>= 1]
NSF_LAYERS = 6  # rational-quadratic coupling layers of the neural spline flow [>= 1]
NSF_BINS = 8  # spline bins per dimension [>= 2]
NSF_TAIL_BOUND = 4.0  # the splines act on [-B, B] (standardised units), identity outside [> 0]
SCALE_BOUND = 3.0  # affine log-scales are soft-clamped to (-c, c): c tanh(s / c) [> 0]
GMM_COMPONENTS = 20  # components of the full-covariance Gaussian-mixture baseline [>= 1]
KNN_K = 5  # neighbours of the k-NN accuracy of original and refined embeddings [>= 1]
SAMPLES = 10000  # samples per flow written to <ds>_<enc>+<flow>.gen.npz [>= 1]
SEED = 0  # seeds the split, the weights, the batch order, the mixture and the samples [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]

# A column whose standard deviation is below this share of its scale counts as constant.
CONSTANT_COLUMN_TOLERANCE = 1e-6
# Vectors whose norms all lie within this relative distance of their mean lie on a sphere.
SPHERE_TOLERANCE = 1e-4
# Training NLL is read back (one host sync) every this many steps.
LOG_EVERY = 20
# Vectors per forward pass when computing validation NLL, refined embeddings and samples.
EVAL_BATCH_SIZE = 8192
# Vectors of the fitting part that initialise ActNorm (a seeded random subset).
ACTNORM_INIT_SIZE = 4096
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- flow layers
# Every layer maps data towards the base: forward(x) -> (y, log|det dy/dx| per row), and
# inverse(y) -> x. Each log-determinant comes from the layer's own triangular structure.
class ActNorm(nn.Module):
    """y = (x - loc) exp(-log_scale) per dimension (Kingma & Dhariwal 2018, Glow);
    log|det| = -sum(log_scale). ``initialize`` sets loc, log_scale to the mean and log standard
    deviation of a real data batch, so that the layer starts by standardising its input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        self.loc.copy_(x.mean(0))
        self.log_scale.copy_(torch.log(x.std(0, correction=0).clamp_min(1e-6)))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x - self.loc) * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(self.log_scale) + self.loc


class Permutation(nn.Module):
    """A fixed reordering of the dimensions; log|det| = 0."""

    def __init__(self, order: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("order", order.clone())
        self.register_buffer("undo", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.order], x.new_zeros(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.undo]


def conditioner(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MLP in -> hidden -> hidden -> out whose last layer starts at zero, so that the layer it
    drives starts as the identity."""
    net = mlp([in_dim, hidden, hidden, out_dim])
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def soft_clamp(s: torch.Tensor, bound: float) -> torch.Tensor:
    """bound * tanh(s / bound): about s for small s, always inside (-bound, bound)."""
    return bound * torch.tanh(s / bound)


class AffineCoupling(nn.Module):
    """RealNVP affine coupling (Dinh et al. 2017): x = (a, b) -> (a, b exp(s(a)) + t(a)), the
    log-scale soft-clamped. The Jacobian is block triangular with diagonal (1, exp(s(a))), so
    log|det| = sum s(a)."""

    def __init__(self, dim: int, hidden: int, scale_bound: float) -> None:
        super().__init__()
        self.split, self.scale_bound = dim // 2, scale_bound
        self.net = conditioner(self.split, hidden, 2 * (dim - self.split))

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(a).chunk(2, dim=1)
        return soft_clamp(s, self.scale_bound), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, :self.split], x[:, self.split:]
        s, t = self._scale_shift(a)
        return torch.cat([a, b * torch.exp(s) + t], dim=1), s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        a, c = y[:, :self.split], y[:, self.split:]
        s, t = self._scale_shift(a)
        return torch.cat([a, (c - t) * torch.exp(-s)], dim=1)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADEAffine(nn.Module):
    """MAF layer (Papamakarios et al. 2017): u_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i)), with
    mu, alpha from a MADE network (Germain et al. 2015) and alpha soft-clamped. The Jacobian is
    lower triangular with diagonal exp(-alpha), so log|det| = -sum alpha. The inverse runs the
    network once per dimension."""

    def __init__(self, dim: int, hidden: int, scale_bound: float) -> None:
        super().__init__()
        self.dim, self.scale_bound = dim, scale_bound
        degrees_in = torch.arange(1, dim + 1)
        # Hidden degrees cycle through 1..dim-1: unit k may see inputs 1..degree(k).
        degrees_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1
        degrees_out = torch.cat([degrees_in, degrees_in])  # mu then alpha for each dimension
        self.layers = nn.ModuleList([
            MaskedLinear(dim, hidden, degrees_hidden[:, None] >= degrees_in[None, :]),
            MaskedLinear(hidden, hidden, degrees_hidden[:, None] >= degrees_hidden[None, :]),
            MaskedLinear(hidden, 2 * dim, degrees_out[:, None] > degrees_hidden[None, :]),
        ])
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def _shift_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h) if i == len(self.layers) - 1 else F.relu(layer(h))
        mu, alpha = h.chunk(2, dim=1)
        return mu, soft_clamp(alpha, self.scale_bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self._shift_log_scale(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(u)
        for _ in range(self.dim):  # after pass i, dimensions 1..i are final
            mu, alpha = self._shift_log_scale(x)
            x = u * torch.exp(alpha) + mu
        return x


# Smallest bin width/height (share of the interval) and knot derivative of the splines.
MIN_BIN_SIZE = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(x + DERIVATIVE_SHIFT) + MIN_DERIVATIVE = 1 at x = 0: zero outputs give slope 1.
DERIVATIVE_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))


def spline_knots(raw: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knot positions (K + 1, from -B to B) and bin sizes (K) along dim 1 from K logits there."""
    bins = raw.shape[1]
    # Softmax over dim 1, not the last: over a short last dimension it is ~10x slower on CPU.
    sizes = MIN_BIN_SIZE + (1 - MIN_BIN_SIZE * bins) * torch.softmax(raw, dim=1)
    inner = torch.cumsum(sizes, dim=1)[:, :-1] * 2 * bound - bound
    ends = torch.full_like(sizes[:, :1], bound)
    knots = torch.cat([-ends, inner, ends], dim=1)
    return knots, knots[:, 1:] - knots[:, :-1]


def rational_quadratic_spline(x: torch.Tensor, raw_widths: torch.Tensor,
                              raw_heights: torch.Tensor, raw_derivatives: torch.Tensor,
                              bound: float, inverse: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline of Gregory & Delbourgo (1982), as in Durkan et al. 2019.

    On [-B, B], K bins with widths w_k, heights h_k (softmax of the raw values) and knot slopes
    d_k (softplus; 1 at the two ends, matching the identity tails outside [-B, B]). In bin k, with
    s = h_k / w_k and xi = (x - x_k) / w_k:
      y = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_k+1 + d_k - 2 s) xi (1 - xi)),
      dy/dx = s^2 (d_k+1 xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2.
    The inverse solves the quadratic for xi. Shapes: x (N, D); raw_widths and raw_heights
    (N, K, D), raw_derivatives (N, K - 1, D). Returns (y, log dy/dx) forwards, or (x, log dy/dx
    at that x) with ``inverse``.
    """
    inside = (x >= -bound) & (x <= bound)
    knots_x, widths = spline_knots(raw_widths, bound)
    knots_y, heights = spline_knots(raw_heights, bound)
    slopes = MIN_DERIVATIVE + F.softplus(raw_derivatives + DERIVATIVE_SHIFT)
    ones = torch.ones_like(slopes[:, :1])
    slopes = torch.cat([ones, slopes, ones], dim=1)
    value = x.clamp(-bound, bound)
    search = knots_y if inverse else knots_x
    # Bin k holds search[k] <= value < search[k + 1]; the right end B falls in the last bin.
    index = (value[:, None, :] >= search[:, 1:-1]).sum(1, keepdim=True)

    def at(table: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return table.gather(1, index + offset)[:, 0]

    x_k, w_k, y_k, h_k = at(knots_x), at(widths), at(knots_y), at(heights)
    d_k, d_k1 = at(slopes), at(slopes, 1)
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k
    if inverse:
        dy = value - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
        xi = (2 * c / (-b - root)).clamp(0, 1)
        result = xi * w_k + x_k
    else:
        xi = ((value - x_k) / w_k).clamp(0, 1)
        result = y_k + h_k * (s_k * xi**2 + d_k * xi * (1 - xi)) / (
            s_k + curvature * xi * (1 - xi))
    between = xi * (1 - xi)
    denominator = s_k + curvature * between
    log_slope = (torch.log(s_k**2 * (d_k1 * xi**2 + 2 * s_k * between + d_k * (1 - xi) ** 2))
                 - 2 * torch.log(denominator))
    return torch.where(inside, result, x), torch.where(inside, log_slope, torch.zeros_like(x))


class SplineCoupling(nn.Module):
    """Neural spline flow coupling layer (Durkan et al. 2019, RQ-NSF (C)): x = (a, b) ->
    (a, g_a(b)), each dimension of b through its own rational-quadratic spline whose bins and
    slopes come from a. The Jacobian is block triangular with diagonal (1, g_a'(b)), so
    log|det| = sum log g_a'(b). Zero conditioner outputs give uniform bins and unit slopes: the
    identity."""

    def __init__(self, dim: int, hidden: int, bins: int, bound: float) -> None:
        super().__init__()
        self.split, self.bins, self.bound = dim // 2, bins, bound
        self.net = conditioner(self.split, hidden, (dim - self.split) * (3 * bins - 1))

    def _spline(self, a: torch.Tensor, b: torch.Tensor,
                inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.net(a).view(len(a), 3 * self.bins - 1, b.shape[1])
        widths, heights, slopes = raw.split([self.bins, self.bins, self.bins - 1], dim=1)
        return rational_quadratic_spline(b, widths, heights, slopes, self.bound, inverse)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, :self.split], x[:, self.split:]
        out, log_slope = self._spline(a, b, inverse=False)
        return torch.cat([a, out], dim=1), log_slope.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        a, c = y[:, :self.split], y[:, self.split:]
        return torch.cat([a, self._spline(a, c, inverse=True)[0]], dim=1)


class Flow(nn.Module):
    """A stack of invertible layers from data x to base z, with z ~ N(0, I):
    log p(x) = log N(f(x); 0, I) + sum over layers of log|det J_layer|."""

    def __init__(self, dim: int, layers: list[nn.Module]) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base: (z, log|det dz/dx|) per row."""
        log_det = x.new_zeros(len(x))
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Base to data."""
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row, in nats."""
        z, log_det = self(x)
        return -0.5 * (z**2).sum(1) - 0.5 * self.dim * LOG_2PI + log_det

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation of every ActNorm from a real batch, layer by layer."""
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                layer.initialize(x)
            x, _ = layer(x)

    def is_initialized(self) -> bool:
        return all(bool(layer.initialized) for layer in self.layers if isinstance(layer, ActNorm))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the model: z ~ N(0, I) mapped to data space."""
        if not self.is_initialized():
            raise RuntimeError("sample() on a flow whose ActNorm layers were never initialised "
                               "from data: call initialize(batch) and train it first")
        device = next(self.parameters()).device
        z = torch.randn(n, self.dim, generator=generator, device="cpu").to(device)
        return self.inverse(z)


def build_flow(name: str, dim: int, seed: int = 0) -> Flow:
    """A flow by name with the hyper-parameters of the current settings; the coupling flows put a
    seeded random permutation before every coupling, MAF reverses the order between layers."""
    if dim < 2:
        raise StageError(f"a flow needs at least 2 dimensions, got {dim}")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    if name == "realnvp":
        for _ in range(REALNVP_LAYERS):
            layers += [ActNorm(dim), Permutation(torch.randperm(dim, generator=generator)),
                       AffineCoupling(dim, HIDDEN, SCALE_BOUND)]
    elif name == "maf":
        for i in range(MAF_LAYERS):
            if i:
                layers.append(Permutation(torch.arange(dim - 1, -1, -1)))
            layers += [ActNorm(dim), MADEAffine(dim, HIDDEN, SCALE_BOUND)]
    elif name == "nsf":
        for _ in range(NSF_LAYERS):
            layers += [ActNorm(dim), Permutation(torch.randperm(dim, generator=generator)),
                       SplineCoupling(dim, HIDDEN, NSF_BINS, NSF_TAIL_BOUND)]
    else:
        raise StageError(f"unknown flow {name!r}; valid names: {', '.join(FLOW_NAMES)}")
    return Flow(dim, layers)


# ---------------------------------------------------------------- inputs and preprocessing
def stage1_path(encoder: str) -> Path:
    return Path(DATA_DIR) / "embeddings" / f"{DATASET}_{encoder}.npz"


def check_columns(path: Path, key: str, z: np.ndarray) -> None:
    """Refuse a column that holds NaN or infinite values or is constant, naming it."""
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


def load_stage1(encoder: str) -> dict[str, Any]:
    """A checked stage-1 embedding file; its train split cut to LIMIT."""
    path = stage1_path(encoder)
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: python encoder_models.py --dataset "
                         f"{DATASET} --models {encoder} --data-dir {DATA_DIR} (or leave "
                         f"{encoder} out of --encoders)")
    raw = load_npz(path, {})  # readable; its arrays are checked below, by column first
    for key in ("z_train", "z_test"):
        if key in raw and raw[key].ndim == 2 and raw[key].dtype.kind == "f":
            check_columns(path, key, raw[key][:LIMIT or None] if key == "z_train" else raw[key])
    data = load_embeddings(path)
    if LIMIT:
        data["z_train"], data["y_train"] = data["z_train"][:LIMIT], data["y_train"][:LIMIT]
    data["path"] = path
    data["fingerprint"] = hashlib.sha256(np.ascontiguousarray(data["z_train"]).tobytes()
                                         ).hexdigest()[:16]
    return data


@dataclass
class Preprocessing:
    """Embedding space -> model space and back: for vectors of one norm r, the stereographic
    chart of the sphere (projected from the pole opposite the train mean direction, D - 1
    coordinates); then standardisation with the train split's mean and standard deviation."""

    mean: np.ndarray
    std: np.ndarray
    radius: float = 0.0  # 0: no chart
    centre: np.ndarray | None = None  # unit vector, the chart's centre (D,)
    basis: np.ndarray | None = None  # orthonormal basis of the centre's complement (D, D - 1)

    @property
    def dims(self) -> int:
        return len(self.mean)

    def chart(self, x: np.ndarray) -> np.ndarray:
        """y = B^T u / (1 + c.u), u = x / r: stereographic projection from the pole -c."""
        u = x / self.radius
        return (u @ self.basis) / (1.0 + u @ self.centre)[:, None]

    def unchart(self, y: np.ndarray) -> np.ndarray:
        """x = r ((1 - |y|^2) c + 2 B y) / (1 + |y|^2): the inverse of ``chart``."""
        squared = (y**2).sum(axis=1, keepdims=True)
        u = ((1.0 - squared) * self.centre[None, :] + 2.0 * y @ self.basis.T) / (1.0 + squared)
        return self.radius * u

    def to_model(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return ((self.chart(x) if self.radius else x) - self.mean) / self.std

    def from_model(self, z: np.ndarray) -> np.ndarray:
        x = np.asarray(z, dtype=np.float64) * self.std + self.mean
        return self.unchart(x) if self.radius else x

    def state(self) -> dict[str, Any]:
        arrays = {"mean": self.mean, "std": self.std}
        if self.radius:
            arrays.update(centre=self.centre, basis=self.basis)
        return {"radius": self.radius, **{k: torch.from_numpy(v) for k, v in arrays.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Preprocessing:
        arrays = {k: state[k].numpy() for k in ("mean", "std", "centre", "basis") if k in state}
        return cls(radius=float(state["radius"]), **arrays)


def sphere_radius(z_train: np.ndarray, z_test: np.ndarray) -> float:
    """The common norm of every train and test vector, or 0 when the norms differ."""
    norms = np.linalg.norm(np.concatenate([z_train, z_test]).astype(np.float64), axis=1)
    radius = float(norms.mean())
    if radius > 0 and np.all(np.abs(norms / radius - 1.0) <= SPHERE_TOLERANCE):
        return radius
    return 0.0


def fit_preprocessing(z_train: np.ndarray, z_test: np.ndarray) -> Preprocessing:
    """The chart (for vectors of one norm) and the standardisation, from the train split."""
    x = np.asarray(z_train, dtype=np.float64)
    radius = sphere_radius(z_train, z_test)
    pre = Preprocessing(mean=np.zeros(x.shape[1]), std=np.ones(x.shape[1]))
    if radius:
        dims = x.shape[1]
        direction = (x / radius).mean(axis=0)
        norm = np.linalg.norm(direction)
        centre = direction / norm if norm > 1e-8 else np.eye(dims)[0]
        # A Householder reflection swaps e_1 and the centre; its other columns span the rest.
        v = centre - np.eye(dims)[0]
        reflection = (np.eye(dims) - 2.0 * np.outer(v, v) / (v @ v)) if v @ v > 1e-24 else \
            np.eye(dims)
        pre = Preprocessing(mean=np.zeros(dims - 1), std=np.ones(dims - 1), radius=radius,
                            centre=reflection[:, 0], basis=reflection[:, 1:])
        if dims < 3:
            raise StageError(f"{dims}-d vectors of one norm leave {dims - 1} chart coordinate(s); "
                             "a flow needs at least 2")
        closest = float(min((z / radius @ pre.centre).min() for z in (x, z_test)))
        if closest < -1 + 1e-9:
            raise StageError("a vector lies at the pole of the sphere chart (opposite the mean "
                             "direction of the train vectors), where it has no coordinates")
        x = pre.chart(x)
    pre.mean, pre.std = x.mean(axis=0), x.std(axis=0)
    return pre


# ---------------------------------------------------------------- baselines
def gaussian_nll(train: np.ndarray, test: np.ndarray) -> float:
    """Test NLL per dimension of one full-covariance Gaussian fitted by maximum likelihood."""
    mean, cov = train.mean(axis=0), np.cov(train, rowvar=False, bias=True)
    log_p = scipy.stats.multivariate_normal(mean, cov).logpdf(test)
    return float(-np.mean(log_p) / train.shape[1])


def mixture_nll(train: np.ndarray, test: np.ndarray, components: int,
                seed: int) -> tuple[float, GaussianMixture]:
    """Test NLL per dimension of a full-covariance Gaussian mixture (scikit-learn EM, k-means
    initialisation, at most 200 iterations), and the fitted mixture."""
    mixture = GaussianMixture(components, covariance_type="full", max_iter=200,
                              random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(train)
    return float(-mixture.score(test) / train.shape[1]), mixture


def baseline_samples(z_train: np.ndarray, z_test: np.ndarray, n: int, seed: int
                     ) -> dict[str, np.ndarray]:
    """n samples of the full-covariance Gaussian and of the GMM_COMPONENTS mixture, fitted as
    this stage fits its baselines (in the standardised model space of the train split), mapped
    back to the embedding space; the benchmarks score them beside the flows' samples."""
    pre = fit_preprocessing(z_train, z_test)
    m_train = pre.to_model(z_train)
    _, mixture = mixture_nll(m_train, m_train[:10], GMM_COMPONENTS, seed)
    mixture_draws, _ = mixture.sample(n)
    rng = np.random.default_rng(seed)
    gaussian_draws = rng.multivariate_normal(m_train.mean(0), np.cov(m_train, rowvar=False,
                                                                     bias=True), n)
    # GaussianMixture.sample returns its draws grouped by component: shuffle for the metrics.
    return {"mixture": pre.from_model(rng.permutation(mixture_draws)),
            "Gaussian": pre.from_model(gaussian_draws)}


# ---------------------------------------------------------------- training
def resume_settings(encoder: str, flow_name: str, fingerprint: str) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued."""
    layers = {"realnvp": REALNVP_LAYERS, "maf": MAF_LAYERS, "nsf": NSF_LAYERS}[flow_name]
    settings = {"dataset": DATASET, "encoder": encoder, "flow": flow_name,
                "embeddings_sha256": fingerprint, "limit": LIMIT, "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
                "grad_clip": GRAD_CLIP, "validation_fraction": VALIDATION_FRACTION,
                "hidden": HIDDEN, "layers": layers, "scale_bound": SCALE_BOUND, "seed": SEED}
    if flow_name == "nsf":
        settings.update(nsf_bins=NSF_BINS, nsf_tail_bound=NSF_TAIL_BOUND)
    if LR_SCHEDULE != "constant":  # the schedule's shape depends on the number of epochs
        settings.update(lr_schedule=LR_SCHEDULE, epochs=EPOCHS)
    return settings


def learning_rate_at(step: int, total_steps: int) -> float:
    """The rate of optimiser step ``step`` (0-based) of ``total_steps``: LEARNING_RATE, or with
    the cosine schedule (Loshchilov & Hutter 2017, no restarts)
    LEARNING_RATE * (1 + cos(pi * step / total_steps)) / 2."""
    if LR_SCHEDULE == "constant":
        return LEARNING_RATE
    return LEARNING_RATE * (1 + math.cos(math.pi * min(step / total_steps, 1.0))) / 2


def split_train(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices of the fitting and validation parts of the train split."""
    order = np.random.default_rng(SEED).permutation(n)
    held_out = max(1, round(VALIDATION_FRACTION * n))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def train_epoch(flow: Flow, optimizer: torch.optim.Optimizer, x: torch.Tensor, epoch: int,
                label: str) -> float:
    """One pass over x in a seeded order; returns the mean NLL per dimension. The running NLL is
    read back every LOG_EVERY steps (no per-step host sync); a non-finite value stops training."""
    flow.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
        SEED * 100_003 + epoch)).to(x.device)
    steps = list(order.split(BATCH_SIZE))
    total, seen = torch.zeros((), device=x.device), 0
    bar = tqdm(steps, desc=f"{label} epoch {epoch}/{EPOCHS}", leave=False, disable=None)
    for step, idx in enumerate(bar, start=1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at((epoch - 1) * len(steps) + step - 1,
                                           EPOCHS * len(steps))
        loss = -flow.log_prob(x[idx]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if GRAD_CLIP:
            nn.utils.clip_grad_norm_(flow.parameters(), GRAD_CLIP)
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


@torch.no_grad()
def mean_nll(flow: Flow, x: torch.Tensor) -> float:
    """Mean NLL per dimension of the rows of x, in eval mode."""
    flow.eval()
    total = sum(-flow.log_prob(chunk).sum() for chunk in x.split(EVAL_BATCH_SIZE))
    return float(total) / len(x) / flow.dim


def validation_nll(flow: Flow, x_val: torch.Tensor) -> float:
    return mean_nll(flow, x_val)


@torch.no_grad()
def to_base(flow: Flow, x: torch.Tensor) -> np.ndarray:
    """Base-space coordinates f(x) of the rows of x, as float32."""
    flow.eval()
    return torch.cat([flow(chunk)[0] for chunk in x.split(EVAL_BATCH_SIZE)]).cpu().numpy()


@torch.no_grad()
def draw_samples(flow: Flow, n: int, seed: int) -> np.ndarray:
    """n samples in model space from a seeded generator, as float64."""
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = [flow.sample(min(EVAL_BATCH_SIZE, n - start), generator).cpu().double()
             for start in range(0, n, EVAL_BATCH_SIZE)]
    return torch.cat(parts).numpy()


CHECKPOINT_KEYS = ("flow_state", "optimizer", "epoch", "train_nll", "val_nll", "seconds",
                   "best_epoch", "best_val_nll", "best_state", "stopped_early", "settings")


def fit_flow(name: str, encoder: str, fingerprint: str, x_fit: torch.Tensor,
             x_val: torch.Tensor, preprocessing: Preprocessing, ckpt: Path) -> dict[str, Any]:
    """Train (or resume) one flow with early stopping; returns the checkpoint dict whose
    ``best_state`` holds the weights of the best validation epoch."""
    label = f"{encoder}+{name}"
    settings = resume_settings(encoder, name, fingerprint)
    seed_everything(SEED, DETERMINISTIC)
    flow = build_flow(name, x_fit.shape[1], SEED).to(x_fit.device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
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
                 f", continuing at epoch {done + 1}/{EPOCHS}" if done < EPOCHS else
                 f"; {EPOCHS} epoch(s) asked for, so no training"))
    else:
        chosen = torch.randperm(len(x_fit), generator=torch.Generator().manual_seed(SEED))
        flow.initialize(x_fit[chosen[:ACTNORM_INIT_SIZE].to(x_fit.device)])
        state = {"epoch": 0, "train_nll": [], "val_nll": [], "seconds": [], "best_epoch": 0,
                 "best_val_nll": math.inf, "best_state": None, "stopped_early": False}
    while state["epoch"] < EPOCHS and not state["stopped_early"]:
        epoch = state["epoch"] + 1
        started = time.time()
        train_nll = train_epoch(flow, optimizer, x_fit, epoch, label)
        # A finite loss before the last step does not make finite weights: check them too.
        for key, value in flow.state_dict().items():
            require_finite(value, f"{label}: {key} after epoch {epoch} (training diverged; "
                           "the last good checkpoint is kept; try a lower --learning-rate)")
        val_nll = validation_nll(flow, x_val)
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
        elif epoch - state["best_epoch"] >= PATIENCE:
            state["stopped_early"] = True
        state.update(flow_state=flow.state_dict(), optimizer=optimizer.state_dict(),
                     settings=settings, preprocessing=preprocessing.state(), flow=name,
                     encoder=encoder, dims=flow.dim)
        save_checkpoint(ckpt, state)
        print(f"{label}: epoch {epoch}/{EPOCHS} train NLL {train_nll:.4f}, validation NLL "
              f"{val_nll:.4f} nats/dim ({seconds:.1f} s)"
              + (f"; no better than epoch {state['best_epoch']} for {PATIENCE} epochs, "
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


RESULT_COLUMNS = ("embedding+flow", "dims", "test NLL", "Gaussian", "mixture", "gain over Gaussian",
                  "gain over mixture", "k-NN original", "k-NN refined", "best epoch / run",
                  "s per epoch")


def result_row(meta: dict[str, Any]) -> list[str]:
    r = meta["results"]
    return [f"{meta['encoder']}+{meta['flow']}", str(r["dims"]) + (" (sphere chart)"
            if r["sphere_radius"] else ""), f"{r['test_nll']:.3f}", f"{r['gaussian_nll']:.3f}",
            f"{r['mixture_nll']:.3f}", f"{r['gaussian_nll'] - r['test_nll']:+.3f}",
            f"{r['mixture_nll'] - r['test_nll']:+.3f}", f"{r['knn_original']:.4f}",
            f"{r['knn_refined']:.4f}", f"{r['best_epoch']} / {r['epochs_run']}",
            f"{r['seconds_per_epoch']:.1f}"]


def results_markdown(metas: list[dict[str, Any]]) -> str:
    """The table of every refined embedding of the dataset found on disk."""
    lines = [f"# Flows on {DATASET} embeddings", "",
             "Written by `flows.py` from the `meta` of every `" + DATASET + "_<enc>+<flow>.npz` in "
             "the embeddings folder. NLL: test split, nats per dimension, in the standardised "
             "model space (vectors of one norm: stereographic chart coordinates), lower is "
             "better; the Gaussian (full covariance) and the " + str(GMM_COMPONENTS) + "-component "
             "full-covariance mixture were fitted to the same train split in the same run. "
             "Gain = baseline NLL - flow NLL. k-NN: k=" + str(KNN_K) + ", fitted on train, "
             "test accuracy, original embedding beside the refined one (base-space "
             "coordinates).", "",
             "| " + " | ".join(RESULT_COLUMNS) + " |", "| --- " * len(RESULT_COLUMNS) + "|"]
    lines += ["| " + " | ".join(result_row(m)) + " |" for m in metas]
    return "\n".join(lines) + "\n"


def main() -> None:
    settings = configure(globals())
    root = Path(DATA_DIR)
    folders = {name: ensure_output_dir(root / name) for name in
               ("embeddings", "visualizations", "results", "checkpoints/flows")}
    limit_cpu_threads(THREADS)
    device = pick_device(DEVICE)
    inputs = {encoder: load_stage1(encoder) for encoder in ENCODERS}  # every check up front
    for data in inputs.values():
        if len(data["z_train"]) < max(2 * GMM_COMPONENTS, 20):
            raise StageError(f"{data['path']}: {len(data['z_train'])} training embeddings "
                             f"(--limit {LIMIT}) are too few for a validation split and a "
                             f"{GMM_COMPONENTS}-component mixture")
    print(f"{DATASET}: {len(ENCODERS)} embedding(s), flows {', '.join(FLOWS)}; device {device}")
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
        baselines["mixture"], mixture = mixture_nll(m_train, m_test, GMM_COMPONENTS, SEED)
        knn_original = knn_accuracy(z_train, data["y_train"], z_test, data["y_test"], KNN_K)
        print(f"{encoder}: test NLL per dim: Gaussian {baselines['gaussian']:.4f}, "
              f"{GMM_COMPONENTS}-component mixture {baselines['mixture']:.4f}"
              f"{'' if mixture.converged_ else ' (EM did not converge in 200 iterations)'}; "
              f"k-NN accuracy {knn_original:.4f} ({time.time() - started:.1f} s)")
        fit_idx, val_idx = split_train(len(m_train))
        x_train = torch.from_numpy(m_train.astype(np.float32)).to(device)
        x_test = torch.from_numpy(m_test.astype(np.float32)).to(device)
        histories = {}
        for name in FLOWS:
            ckpt = folders["checkpoints/flows"] / f"{DATASET}_{encoder}+{name}.pt"
            state = fit_flow(name, encoder, data["fingerprint"],
                             x_train[torch.from_numpy(fit_idx).to(device)],
                             x_train[torch.from_numpy(val_idx).to(device)], pre, ckpt)
            histories[name] = state
            flow = build_flow(name, pre.dims, SEED).to(device)
            flow.load_state_dict(state["best_state"])
            test_nll = mean_nll(flow, x_test)
            refined_train, refined_test = to_base(flow, x_train), to_base(flow, x_test)
            samples = pre.from_model(draw_samples(flow, SAMPLES, SEED)).astype(np.float32)
            for key, array in (("refined embeddings", refined_test), ("samples", samples),
                               ("refined embeddings", refined_train)):
                if not np.isfinite(array).all() or not math.isfinite(test_nll):
                    raise StageError(f"{encoder}+{name}: the best epoch's flow gives non-finite "
                                     f"{key} or test NLL; {ckpt} is kept, nothing was written")
            knn_refined = knn_accuracy(refined_train, data["y_train"], refined_test,
                                       data["y_test"], KNN_K)
            results = {"dims": pre.dims, "sphere_radius": pre.radius, "test_nll": test_nll,
                       "gaussian_nll": baselines["gaussian"],
                       "mixture_nll": baselines["mixture"], "mixture_components": GMM_COMPONENTS,
                       "mixture_converged": bool(mixture.converged_),
                       "knn_original": knn_original, "knn_refined": knn_refined, "knn_k": KNN_K,
                       "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                       "best_val_nll": state["best_val_nll"],
                       "seconds_per_epoch": float(np.mean(state["seconds"])),
                       "n_fit": len(fit_idx), "n_val": len(val_idx), "n_test": len(z_test)}
            meta = make_meta(__file__, settings, DATASET, SEED, encoder=encoder, flow=name,
                             source_embeddings=data["path"].name, checkpoint=str(ckpt),
                             embeddings_sha256=data["fingerprint"], results=results,
                             class_names=data["meta"].get("class_names"))
            stem = f"{DATASET}_{encoder}+{name}"
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
                                             f"{GMM_COMPONENTS}-component mixture":
                                             baselines["mixture"]},
                                 f"{DATASET} {encoder}: flows fitted by maximum likelihood")
        png = save_figure(figure, folders["visualizations"] / f"flows_{DATASET}_{encoder}_nll.png")
        print(f"{encoder}: wrote {png}")
    metas = []
    for path in sorted(folders["embeddings"].glob(f"{DATASET}_*+*.npz")):
        if not path.name.endswith(".gen.npz"):
            meta = load_npz(path, {})["meta"]
            if meta.get("script") == Path(__file__).name and "results" in meta:
                metas.append(meta)
    table = results_markdown(metas)
    out = write_text(folders["results"] / f"flows_{DATASET}.md", table)
    print("\n" + table.split("\n\n", 2)[2] + f"\nwrote {out}")


if __name__ == "__main__":
    run_stage(main)
