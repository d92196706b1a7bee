"""Contrastive losses: NT-Xent (SimCLR), the triplet loss with batch mining, and CLIP's
symmetric image-text loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MINING_STRATEGIES = ("all", "hard")


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, SimCLR) for N pairs of views ``z1[i]``, ``z2[i]``.

    With the 2N views L2-normalised and s(i, j) = cos(z_i, z_j) / t, each anchor i has one positive
    (its twin p(i)) and 2N - 2 negatives:
        l_i = -log( exp(s(i, p(i))) / sum_{k != i} exp(s(i, k)) ),   loss = mean_i l_i.
    Self-similarity is removed from the denominator, never used as a target.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, twins)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` (differentiable, also at zero)."""
    squared = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 1.0) -> torch.Tensor:
    """Mean over explicit triplets of max(0, ||a - p||_2 - ||a - n||_2 + margin)."""
    d_ap = (anchor - positive).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    d_an = (anchor - negative).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return F.relu(d_ap - d_an + margin).mean()


def batch_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                       mining: str = "hard") -> torch.Tensor:
    """Triplet loss mined inside a labelled batch (Hermans et al. 2017, "In Defense of the Triplet
    Loss"), with d the Euclidean distance.

    ``hard`` (batch-hard): for each anchor a with at least one positive and one negative,
        max(0, max_p d(a, p) - min_n d(a, n) + margin), averaged over those anchors.
    ``all`` (batch-all): max(0, d(a, p) - d(a, n) + margin) over every valid triplet
        (a != p, same label; n of another label), averaged over the triplets whose loss is > 0
        (zero when none is).
    """
    if mining not in MINING_STRATEGIES:
        raise ValueError(f"mining must be one of {MINING_STRATEGIES}, got {mining!r}")
    dist = pairwise_distances(embeddings.float())
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    if mining == "hard":
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        valid = positive.any(1) & negative.any(1)
        if not valid.any():
            return dist.sum() * 0.0
        return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()
    losses = F.relu(dist.unsqueeze(2) - dist.unsqueeze(1) + margin)  # [a, p, n]
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)
    active = valid & (losses > 0)
    if not active.any():
        return dist.sum() * 0.0
    return losses[active].mean()


def clip_contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                          scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric image-text contrastive loss of CLIP (Radford et al. 2021) for N aligned pairs.

    With u_i, v_i the L2-normalised image and text embeddings of pair i and logits
    s_ij = scale * <u_i, v_j>:
        L = 1/2 [ mean_i -log( exp(s_ii) / sum_j exp(s_ij) )      (image -> text)
                + mean_j -log( exp(s_jj) / sum_i exp(s_ij) ) ]    (text -> image).
    ``scale`` is the inverse temperature exp(t) (CLIP learns t and caps the scale at 100).
    """
    if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"expected two (N, D) tensors of one shape, got "
                         f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}")
    images = F.normalize(image_embeddings.float(), dim=1)
    texts = F.normalize(text_embeddings.float(), dim=1)
    logits = scale * images @ texts.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
