"""Normalizing flows over embedding vectors: layers, the three flows, preprocessing, baselines.

Every layer maps data towards the base: forward(x) -> (y, log|det dy/dx| per row), and
inverse(y) -> x; each log-determinant comes from the layer's own triangular structure. A flow
(``Flow``) is a stack of them with a standard normal base. The three flows are registry entries
(``FLOWS``: a function that lays out the layers); their hyper-parameters are a ``FlowConfig``,
which every checkpoint of flows.py stores with the flow's size (``architecture``), so that
``from_checkpoint(path)`` rebuilds the fitted flow and its preprocessing without settings.
The Gaussian and Gaussian-mixture baselines a flow should beat are fitted here too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import nn

from dataio.artifacts import read_architecture
from models.nets import mlp
from runtime.stage import StageError

FAMILY = "flows"
# Vectors whose norms all lie within this relative distance of their mean lie on a sphere.
SPHERE_TOLERANCE = 1e-4
# Vectors per forward pass when computing NLL, base-space coordinates and samples.
EVAL_BATCH_SIZE = 8192
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class FlowConfig:
    """Hyper-parameters of the flows (each flow reads the ones it has)."""

    hidden: int = 256  # width of the hidden layers of every conditioner network
    realnvp_layers: int = 8  # affine coupling layers of RealNVP
    maf_layers: int = 5  # MADE layers of MAF
    nsf_layers: int = 6  # rational-quadratic coupling layers of the neural spline flow
    nsf_bins: int = 8  # spline bins per dimension
    nsf_tail_bound: float = 4.0  # the splines act on [-B, B], identity outside
    scale_bound: float = 3.0  # affine log-scales are soft-clamped to (-c, c): c tanh(s / c)


# ---------------------------------------------------------------- flow layers
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


# ---------------------------------------------------------------- the registry
def _realnvp(dim: int, c: FlowConfig, generator: torch.Generator) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(c.realnvp_layers):
        layers += [ActNorm(dim), Permutation(torch.randperm(dim, generator=generator)),
                   AffineCoupling(dim, c.hidden, c.scale_bound)]
    return layers


def _maf(dim: int, c: FlowConfig, generator: torch.Generator) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(c.maf_layers):
        if i:
            layers.append(Permutation(torch.arange(dim - 1, -1, -1)))
        layers += [ActNorm(dim), MADEAffine(dim, c.hidden, c.scale_bound)]
    return layers


def _nsf(dim: int, c: FlowConfig, generator: torch.Generator) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(c.nsf_layers):
        layers += [ActNorm(dim), Permutation(torch.randperm(dim, generator=generator)),
                   SplineCoupling(dim, c.hidden, c.nsf_bins, c.nsf_tail_bound)]
    return layers


# name -> the layers of that flow for (dims, config, a seeded generator of permutations)
FLOWS: dict[str, Callable[[int, FlowConfig, torch.Generator], list[nn.Module]]] = {
    "realnvp": _realnvp, "maf": _maf, "nsf": _nsf}
FLOW_NAMES = tuple(FLOWS)
# The config fields of each flow's layer count: a checkpoint records them as "layers".
LAYER_FIELDS = {"realnvp": "realnvp_layers", "maf": "maf_layers", "nsf": "nsf_layers"}


def build_flow(name: str, dim: int, config: FlowConfig, seed: int = 0) -> Flow:
    """A flow by name; the coupling flows put a seeded random permutation before every
    coupling, MAF reverses the order between layers."""
    if dim < 2:
        raise StageError(f"a flow needs at least 2 dimensions, got {dim}")
    if name not in FLOWS:
        raise StageError(f"unknown flow {name!r}; valid names: {', '.join(FLOW_NAMES)}")
    return Flow(dim, FLOWS[name](dim, config, torch.Generator().manual_seed(seed)))


def architecture(name: str, dim: int, config: FlowConfig) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its flow: family, name, size and config."""
    return {"family": FAMILY, "name": name, "dim": dim, "config": asdict(config)}


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    state: Mapping[str, Any] | None = None) -> tuple[Flow, Preprocessing]:
    """The flow of a checkpoint written by flows.py with the weights of its best validation
    epoch, in eval mode, and the preprocessing from the embedding space to its model space
    (``Preprocessing.to_model``): a fitted flow is the pair. ``state``: the checkpoint, when the
    caller has loaded it already."""
    path = Path(path)
    state, record = read_architecture(path, state, FAMILY, FLOW_NAMES, "flows",
                                      "python flows.py")
    try:
        flow = build_flow(record["name"], int(record["dim"]), FlowConfig(**record["config"]))
        flow.load_state_dict(state["best_state"])
        preprocessing = Preprocessing.from_state(state["preprocessing"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: cannot rebuild its flow "
                         f"({str(err).splitlines()[0]})") from err
    return flow.to(device).eval(), preprocessing


# ---------------------------------------------------------------- preprocessing
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


def baseline_samples(z_train: np.ndarray, z_test: np.ndarray, n: int, seed: int,
                     components: int = 20) -> dict[str, np.ndarray]:
    """n samples of the full-covariance Gaussian and of the ``components`` mixture, fitted as
    flows.py fits its baselines (in the standardised model space of the train split), mapped
    back to the embedding space; the benchmarks score them beside the flows' and GANs' samples."""
    pre = fit_preprocessing(z_train, z_test)
    m_train = pre.to_model(z_train)
    _, mixture = mixture_nll(m_train, m_train[:10], components, seed)
    mixture_draws, _ = mixture.sample(n)
    rng = np.random.default_rng(seed)
    gaussian_draws = rng.multivariate_normal(m_train.mean(0), np.cov(m_train, rowvar=False,
                                                                     bias=True), n)
    # GaussianMixture.sample returns its draws grouped by component: shuffle for the metrics.
    return {"mixture": pre.from_model(rng.permutation(mixture_draws)),
            "Gaussian": pre.from_model(gaussian_draws)}


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def mean_nll(flow: Flow, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Mean NLL per dimension of the rows of x, in eval mode."""
    flow.eval()
    total = sum(-flow.log_prob(chunk).sum() for chunk in x.split(batch_size))
    return float(total) / len(x) / flow.dim


@torch.no_grad()
def to_base(flow: Flow, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Base-space coordinates f(x) of the rows of x, as float32."""
    flow.eval()
    return torch.cat([flow(chunk)[0] for chunk in x.split(batch_size)]).cpu().numpy()


@torch.no_grad()
def draw_samples(flow: Flow, n: int, seed: int, batch_size: int = EVAL_BATCH_SIZE
                 ) -> np.ndarray:
    """n samples in model space from a seeded generator, as float64."""
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = [flow.sample(min(batch_size, n - start), generator).cpu().double()
             for start in range(0, n, batch_size)]
    return torch.cat(parts).numpy()
