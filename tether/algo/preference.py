"""Reward-model losses on preference pairs.

[BT] Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs";
[IGPT] Ouyang et al. 2022, "Training language models to follow instructions with human feedback";
[L2] Touvron et al. 2023, "Llama 2" (the margin term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise reward-model loss [BT, IGPT]: ``mean(−log σ(r_c − r_r − m))``.

    chosen, rejected: ``[B]`` scalar rewards of the preferred and the other completion of each pair.
    margin: optional ``[B]`` (or scalar) required gap ``m`` [L2]; 0 when None.
    Stats (sums over the B pairs, so micro-batches add up): ``correct`` (pairs with r_c > r_r;
    ties count ½), ``gap`` (r_c − r_r), ``loss`` (the per-pair loss).
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must both be [B]")
    diff = chosen - rejected
    logits = diff if margin is None else diff - margin
    per_pair = -F.logsigmoid(logits)
    with torch.no_grad():
        d = diff.detach()
        stats = {
            "correct": (d > 0).float().sum() + 0.5 * (d == 0).float().sum(),
            "gap": d.sum(),
            "loss": per_pair.detach().sum(),
        }
    return per_pair.mean(), stats
