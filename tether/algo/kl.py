"""KL estimators and KL-coefficient controllers.

With samples drawn from the policy π and ``log ρ = log π_ref(a|s) − log π(a|s)`` [KL]:

* k1 = −log ρ                  (unbiased, can be negative per sample)
* k2 = ½ (log ρ)²              (biased, low variance, ≥ 0)
* k3 = (ρ − 1) − log ρ         (unbiased, ≥ 0)
* abs = |log ρ|                (TRL's "abs"; biased, ≥ 0)

As a loss term, a ``+`` suffix (``k1+``, ``k3+``, ``abs+``) keeps the estimator's value but takes its
gradient from k2, a straight-through estimator: ``k2 + sg(kₓ − k2)`` [ST]. The gradient of k2,
``(log π − log π_ref)·∇log π``, is the on-policy gradient of KL(π‖π_ref) in expectation, while the
gradient of k3 in a loss is biased (it is that of KL(π_ref‖π)) and k1's has zero mean [ST].

[KL] J. Schulman, "Approximating KL Divergence", 2020.
[ST] "On Computation and Design of KL Divergence for Reinforcement Learning and RLHF", arXiv 2505.17508,
2025, as veRL implements it (``k3+``: the value of k3, the gradient of ½(log π − log π_ref)²).
[Z19] Ziegler et al., "Fine-Tuning Language Models from Human Preferences", 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
KL_LOSS_ESTIMATORS = KL_ESTIMATORS + ("k1+", "k3+", "abs+")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of π against π_ref.

    logprobs, ref_logprobs: ``[B, T]`` log π(a_t|s_t) and log π_ref(a_t|s_t) of the sampled tokens.
    Returns ``[B, T]`` (nats per token). Masking is the caller's job (see ``masked_sum``).
    ``estimator`` is one of ``k1``, ``k2``, ``k3``, ``abs``, or a loss-only straight-through form
    ``k1+``, ``k3+``, ``abs+`` (formulas in the module docstring). Differentiable in ``logprobs``, so
    the same function serves as a KL loss term.
    """
    if estimator.endswith("+") and estimator in KL_LOSS_ESTIMATORS:
        k2 = kl_penalty(logprobs, ref_logprobs, "k2")
        return k2 + (kl_penalty(logprobs, ref_logprobs, estimator[:-1]) - k2).detach()
    log_ratio = ref_logprobs - logprobs  # log ρ
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # clamp keeps exp() finite for wildly off-policy tokens; k3 is ≥ 0 for every finite log ρ
        log_ratio = log_ratio.clamp(-20.0, 20.0)
        return torch.expm1(log_ratio) - log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_LOSS_ESTIMATORS}")


@dataclass
class FixedKLController:
    """A constant KL coefficient β."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed β never changes."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Adaptive β from [Z19] (lm-human-preferences ``AdaptiveKLController``).

    ``e = clip(KL / target − 1, −0.2, 0.2)``;  ``β ← β · (1 + e · n_steps / horizon)``
    where KL is the mean per-sequence KL (nats) of the last batch and ``n_steps`` the number of
    sequences in it.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
