"""The contrastive losses against naive loops over their formulas and against PyTorch."""

import math

import pytest
import torch

from CL_loss_function import batch_triplet_loss, nt_xent_loss, triplet_loss


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        twin = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[twin]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_loop(temperature):
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    got = nt_xent_loss(z1, z2, temperature).item()
    assert got == pytest.approx(naive_nt_xent(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_identical_views_and_scale_free():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(8, 16, generator=gen)
    aligned = nt_xent_loss(z, z, 0.1).item()
    shuffled = nt_xent_loss(z, z[torch.randperm(8, generator=gen)], 0.1).item()
    assert aligned < shuffled
    assert nt_xent_loss(3 * z, z, 0.1).item() == pytest.approx(aligned, rel=1e-5)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


@pytest.mark.parametrize("margin", [0.2, 1.0, 3.0])
def test_triplet_matches_torch(margin):
    gen = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(10, 7, generator=gen) for _ in range(3))
    reference = torch.nn.TripletMarginLoss(margin=margin)(a, p, n).item()
    assert triplet_loss(a, p, n, margin).item() == pytest.approx(reference, abs=1e-4)


def naive_batch_triplet(x: torch.Tensor, y: torch.Tensor, margin: float, mining: str) -> float:
    x, n = x.double(), len(y)

    def d(i, j):
        return float((x[i] - x[j]).norm())

    if mining == "hard":
        losses = []
        for a in range(n):
            pos = [d(a, p) for p in range(n) if p != a and y[p] == y[a]]
            neg = [d(a, k) for k in range(n) if y[k] != y[a]]
            if pos and neg:
                losses.append(max(0.0, max(pos) - min(neg) + margin))
        return sum(losses) / len(losses)
    active = []
    for a in range(n):
        for p in range(n):
            for k in range(n):
                if p != a and y[p] == y[a] and y[k] != y[a]:
                    value = d(a, p) - d(a, k) + margin
                    if value > 0:
                        active.append(value)
    return sum(active) / len(active) if active else 0.0


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("margin", [0.5, 2.0])
def test_batch_triplet_matches_naive_loop(mining, margin):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 4, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 2, 0])
    got = batch_triplet_loss(x, y, margin, mining).item()
    assert got == pytest.approx(naive_batch_triplet(x, y, margin, mining), rel=1e-5)


def test_batch_triplet_zero_when_classes_are_far_apart_and_has_gradient():
    y = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]], requires_grad=True)
    loss = batch_triplet_loss(x, y, margin=1.0, mining="all")
    assert loss.item() == 0.0
    close = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, 0.0], [3.0, 0.0]], requires_grad=True)
    loss = batch_triplet_loss(close, y, margin=1.0, mining="hard")
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(close.grad).all() and close.grad.abs().sum() > 0


def test_batch_triplet_without_valid_triplets_is_zero():
    x = torch.randn(3, 2, requires_grad=True)
    assert batch_triplet_loss(x, torch.tensor([1, 1, 1]), mining="hard").item() == 0.0
    with pytest.raises(ValueError):
        batch_triplet_loss(x, torch.tensor([0, 1, 2]), mining="semi")
