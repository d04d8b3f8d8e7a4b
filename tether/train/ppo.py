"""One PPO-for-RLHF iteration, top to bottom.

    a rollout (prompt + response ids, with the temperature T they were sampled at) and one score each
      1. make_experience: one no-grad forward each, dropout off, for log π_old, log π_ref and V_old,
         logits upcast to float32 and divided by T [H24]
      2. per-token reward r_t = −β·kl_t, plus the score on the last valid token [Z19, S20]
         (kl_t: k1 / k2 / k3 of log π_ref − log π_old [KL]); then GAE [PPO, H24]
             δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   R_t = A_t + V_t  (V = 0 after the end)
         and A whitened over the valid tokens of the global batch [H24]
         (without a critic: GRPO / RLOO / REINFORCE++ advantages, estimators.py)
      3. ppo_update: ppo_epochs × shuffled minibatches × accumulation micro-batches of
             L_pg = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)),   ρ = exp(log π − log π_old)       [PPO]
             L_v  = ½·max((V − R)², (clip(V, V_old ± ε_v) − R)²)                          [H24]
         (the policy loss is config.policy_loss: this clipped one, with clip-higher ε_high; GSPO's
         sequence ratio; CISPO's detached clipped weight — tether.algo.losses, chosen in estimators.py)
         plus the entropy and KL-loss terms, each normalised by the minibatch's global valid-token (or
         sequence) count, so the split into micro-batches and processes never changes the gradient;
         one clipped-gradient optimiser step per minibatch
      4. the KL controller's update (adaptive β: e = clip(KL/KL_target − 1, ±0.2), β ← β·(1 + e·n/H)) [Z19]
         -> the stats dict

The maths is in ``tether.algo`` (``kl_penalty``, ``gae``, ``whiten``, ``ppo_policy_loss``,
``value_loss``, ...); this file calls it in order. It does no I/O: generation and the step API are in
trainer.py, the dataset loop in loop.py, saving and resuming in persistence.py.

Sources: [Z19] Ziegler et al. 2019; [S20] Stiennon et al. 2020; [H24] Huang et al. 2024, "The N+
Implementation Details of RLHF with PPO"; [PPO] Schulman et al. 2017; [KL] Schulman, "Approximating
KL Divergence".
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch
from torch import nn

from ..algo import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    informative_groups,
    kl_penalty,
    logprob_gap,
    masked_sum,
    truncated_importance_weights,
    value_loss,
    whiten,
)
from ..config import PPOConfig
from ..models.forward import critic_values, response_forward
from ..tracking.memory import phase_memory, release_free_heap
from ..rewards.base import offset_scores_hint
from ..rollout import Experience, Rollout
from ..models.offload import ParkedWeights
from ..rollout.types import fit_columns, trim_padding_columns
from .distributed import Distributed
from .estimators import estimate_advantages, kl_in_loss, policy_loss_fn, shape_scores
from .faults import EngineMismatchError, FaultMonitor
from .optim import StepInBackward, make_scheduler
from .precision import Precision, checkpointing_active
from .sharding import as_float

logger = logging.getLogger(__name__)


def returns_freed_memory(config: PPOConfig, device: torch.device) -> bool:
    """Whether freed memory is handed back to the OS at phase boundaries (``return_freed_memory``, CPU)."""
    return config.return_freed_memory and torch.device(device).type == "cpu"


class PPOLearner:
    """What one PPO iteration updates, and the iteration itself (``learn``).

    Owns the trained modules (``policy`` and ``critic`` or ``value_head``), the frozen reference
    (``ref_model``; None with LoRA: the policy with adapters disabled), their optimiser and LR
    scheduler, the KL controller, the minibatch shuffle generator, the fault counter and the
    iteration count. Under data parallelism the loss forward/backward runs on DDP wrappers of the
    trained modules; scoring and saving use the modules themselves. Every forward runs in
    ``precision.autocast()`` (bf16 under ``bf16-mixed``, nothing under ``fp32``).
    """

    def __init__(self, config: PPOConfig, policy: nn.Module, ref_model: nn.Module | None,
                 critic: nn.Module | None, value_head: nn.Module | None, optimizer: torch.optim.Optimizer,
                 dist: Distributed, precision: Precision | None = None):
        self.config = config
        self.precision = precision or Precision("fp32", "cpu", "default")
        # micro-batch widths are rounded up to a multiple of this (few shapes: see PPOConfig.pad_to_multiple_of)
        self.width_multiple = config.pad_to_multiple_of or self.precision.width_multiple
        self.policy, self.ref_model, self.critic, self.value_head = policy, ref_model, critic, value_head
        self.parked_reference: ParkedWeights | None = None  # offload_reference: parked after each use
        self.optimizer = optimizer
        self.stepper: StepInBackward | None = None
        if config.optimizer_in_backward:
            if dist.enabled:
                raise ValueError("optimizer_in_backward needs one process: DDP and FSDP2 reduce the gradients after "
                                 "backward, when gradient release has already stepped and freed them")
            self.stepper = StepInBackward(optimizer)
        self.scheduler = None  # built at the first iteration: train() may fill in total_steps first
        if config.adaptive_kl:
            self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(config.kl_coef)
        self.dist = dist
        self._train_policy = dist.wrap(policy)
        self._train_critic = dist.wrap(critic)
        self._train_value_head = dist.wrap(value_head)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)  # equal on all ranks: one data order
        self.faults = FaultMonitor(config.max_bad_steps)
        self.iteration = 0
        self.last_experience: Experience | None = None
        self._warned_offset_scores = False
        self.policy_loss = policy_loss_fn(config)

    def learn(self, rollout: Rollout, scores: torch.Tensor) -> dict[str, float]:
        """One iteration on a scored rollout (``scores``: ``[B]`` raw sequence scores); returns its stats."""
        t0 = time.perf_counter()
        if self.scheduler is None:
            self.scheduler = self.make_scheduler()
        for module in (self.policy, self.critic, self.value_head):  # dropout off in every forward [H24], even
            if module is not None:                                  # after a program's model.train()
                module.eval()
        # the last update's gradients: kept after it for programs that read them, dead from here on (each
        # minibatch makes its own) — freed before the experience phase's forwards, not beside them
        self.optimizer.zero_grad(set_to_none=True)
        returned = 0
        if returns_freed_memory(self.config, rollout.input_ids.device):  # ... and handed back to the OS
            returned = release_free_heap()
        experience, stats = self.make_experience(rollout, scores)
        stats["memory/returned_before_experience_gib"] = returned / 2**30
        stats["time/experience"] = time.perf_counter() - t0
        stats.update(phase_memory("experience", rollout.input_ids.device))
        stats.update(self.ppo_update(experience))
        stats.update(phase_memory("update", rollout.input_ids.device))
        self.kl_ctl.update(stats["objective/kl"], rollout.prompt_ids.shape[0] * self.dist.world_size)
        self.iteration += 1
        stats["time/step"] = time.perf_counter() - t0
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.last_experience = experience  # for statistics a caller derives (TRL's keys); freed next iteration
        return stats

    # ------------------------------------------------------------------ 1-2. experience and advantages

    @torch.no_grad()
    def make_experience(self, rollout: Rollout, scores: torch.Tensor) -> tuple[Experience, dict[str, float]]:
        """Score a rollout once (no grad, dropout off): logprobs, ref logprobs, values, then rewards,
        GAE and whitened advantages. scores: ``[B]`` raw sequence scores. Logits are divided by the
        temperature the rollout was sampled at [H24] (``config.temperature`` when unknown)."""
        cfg = self.config
        temperature = rollout.temperature if rollout.temperature is not None else cfg.temperature
        input_ids, attention_mask, mask = rollout.input_ids, rollout.attention_mask, rollout.action_mask
        T = mask.shape[1]
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        for rows in torch.arange(input_ids.shape[0], device=input_ids.device).split(cfg.micro_batch_size):
            # drop the columns that are padding in every row of this micro-batch (width rounded up to a
            # multiple of pad_to_multiple_of); fit the outputs back to T
            ids, attn, t = trim_padding_columns(input_ids[rows], attention_mask[rows], mask[rows], self.width_multiple)
            with self.precision.autocast():
                out = response_forward(self.policy, ids, attn, t, temperature, self.value_head, with_entropy=True,
                                       fused=self.config.fused_logprobs)
                with self.reference() as ref:
                    ref_out = response_forward(ref, ids, attn, t, temperature, fused=self.config.fused_logprobs)
                if out.values is not None:
                    row_values = out.values
                elif self.critic is not None:
                    row_values = critic_values(self.critic, ids, attn, t)
                else:
                    row_values = torch.zeros_like(out.logprobs)
            for outputs, x in ((logprobs, out.logprobs), (entropy, out.entropy), (ref_logprobs, ref_out.logprobs),
                               (values, row_values)):
                outputs.append(fit_columns(x, T))
        if self.parked_reference is not None:  # idle until the next iteration's experience: out of memory
            self.parked_reference.park()
        logprobs, ref_logprobs = torch.cat(logprobs), torch.cat(ref_logprobs)
        values = torch.where(mask, torch.cat(values), 0.0)
        entropy = torch.cat(entropy)

        shaped = shape_scores(cfg, scores, rollout.ended, rollout.response_mask.sum(1))
        in_loss = self.rows_in_loss(rollout, shaped)  # [B] bool, before whitening can blur equal scores
        if cfg.whiten_scores:
            shaped = whiten(shaped, torch.ones_like(shaped, dtype=torch.bool), all_reduce=self.dist.sum)
        if cfg.score_clip is not None:
            shaped = shaped.clamp(-cfg.score_clip, cfg.score_clip)
        kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator), 0.0)
        advantages, returns, rewards = estimate_advantages(cfg, shaped, kl, values, mask, self.kl_ctl.value,
                                                           all_reduce=self.dist.sum)
        stats = self._experience_stats(rollout, scores, kl, rewards, entropy)
        is_weights = None
        if rollout.sample_logprobs is not None:
            stats.update(self._engine_gap(logprobs, rollout.sample_logprobs, mask))
            if cfg.tis_cap is not None:
                is_weights, tis = truncated_importance_weights(logprobs, rollout.sample_logprobs, mask, cfg.tis_cap)
                ratio, capped, count = self.dist.sum(torch.stack([tis["ratio"], tis["capped"],
                                                                  mask.sum().float()])).tolist()
                stats.update({"rollout/tis_ratio_mean": ratio / max(count, 1.0),
                              "rollout/tis_capped_frac": capped / max(count, 1.0)})
        if in_loss is not None:
            kept = self.dist.sum(torch.stack([in_loss.sum().float(), torch.tensor(float(in_loss.numel()), device=in_loss.device)]))
            stats["loss/rows_in_loss_frac"] = (kept[0] / kept[1]).item()
            mask = mask & in_loss[:, None]  # rows left out of the loss: no token of theirs counts
        experience = Experience(input_ids, attention_mask, mask, logprobs, ref_logprobs, values, advantages, returns,
                                temperature=temperature, is_weights=is_weights)
        return experience, stats

    def rows_in_loss(self, rollout: Rollout, shaped: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` bool, the rows the loss trains on, or None for all: truncated responses are left out
        under ``overlong_filter``, groups of equal scores (no gradient) under dynamic sampling."""
        cfg, keep = self.config, None
        if cfg.overlong_filter:
            keep = rollout.ended.clone()
        if cfg.filters_groups:
            informative = informative_groups(shaped, cfg.num_generations).repeat_interleave(cfg.num_generations)
            keep = informative if keep is None else keep & informative
        return keep

    def _engine_gap(self, logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
        """``rollout/logprob_diff_mean`` / ``_max`` (nats per token) between the engine that sampled and
        the trainer's old logprobs, over every process; in fp32 past ``max_engine_logprob_diff`` the
        engine is not sampling from this policy, and the run stops before updating on its samples."""
        gap = logprob_gap(logprobs, engine_logprobs, mask)
        total, count = self.dist.sum(torch.stack([gap["sum"], gap["count"]])).tolist()
        largest = self.dist.gather(gap["max"].reshape(1)).max().item()
        mean = total / max(count, 1.0)
        limit = self.config.max_engine_logprob_diff
        if not self.precision.mixed and mean > limit:
            raise EngineMismatchError(
                f"iteration {self.iteration + 1}: the rollout engine's logprobs of its samples differ from the "
                f"trainer's by {mean:.3g} nats per token on average (max {largest:.3g}; max_engine_logprob_diff "
                f"{limit:g}): it is not sampling from the policy being trained (weights not updated, or a "
                "tensor such as a tied lm_head left out of the update)")
        return {"rollout/logprob_diff_mean": mean, "rollout/logprob_diff_max": largest}

    def _experience_stats(self, rollout: Rollout, scores: torch.Tensor, kl: torch.Tensor, rewards: torch.Tensor,
                          entropy: torch.Tensor) -> dict[str, float]:
        """Statistics of the global batch: per-row numbers gathered from every process."""
        mask = rollout.action_mask
        rows = self.dist.gather(torch.stack([
            scores.float(), masked_sum(kl, mask, dim=1), rewards.sum(1), mask.sum(1).float(),
            rollout.ended.float(), masked_sum(entropy, mask, dim=1)], dim=1))
        row_scores, kl_per_seq, rlhf, lengths, ended, entropy_sums = rows.unbind(1)
        if (not self.config.whiten_scores and not self._warned_offset_scores and row_scores.numel() > 1
                and self.iteration == 0):
            # the first batch of a fresh run tells; a resumed run's critic is no longer untrained, and scores
            # that the policy has learned to raise are no sign of a badly centred reward
            self._warned_offset_scores = True
            hint = offset_scores_hint(row_scores.mean().item(), row_scores.std().item())
            if hint and self.dist.is_main:
                logger.warning(hint)
        return {
            "objective/kl": kl_per_seq.mean().item(),
            "objective/kl_coef": float(self.kl_ctl.value),
            "objective/entropy": (entropy_sums.sum() / lengths.sum().clamp(min=1)).item(),
            "objective/scores": row_scores.mean().item(),
            "objective/rlhf_reward": rlhf.mean().item(),
            "env/reward_mean": row_scores.mean().item(),
            "env/reward_std": row_scores.std().item() if row_scores.numel() > 1 else 0.0,
            "tokens/response_len_mean": lengths.mean().item(),
            "tokens/ended_frac": ended.mean().item(),
        }

    # ------------------------------------------------------------------ 3. clipped updates

    def ppo_update(self, experience: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled minibatches; one optimiser step per minibatch.

        A minibatch whose loss or gradient norm is not finite is skipped (no optimiser or scheduler
        step) and counted by ``self.faults``, which stops the run after too many in a row."""
        cfg = self.config
        batch = experience.input_ids.shape[0]
        totals: dict[str, float] = {}
        steps = skipped = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(batch, generator=self.shuffle_generator).to(experience.input_ids.device)
            for minibatch in order.split(cfg.backward_batch_size):
                if self.dist.sum(experience.response_mask[minibatch].sum()).item() == 0:
                    continue  # every row left out of the loss: no gradient, and no Adam step on stale moments
                if self.stepper is not None:  # gradient release: each parameter steps during backward
                    self.stepper.begin()
                    sums = self.accumulate_gradients(experience, minibatch)
                    grad_norm, non_finite = self.stepper.end()
                    grad_norm = math.nan if non_finite else grad_norm
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    sums = self.accumulate_gradients(experience, minibatch)
                    grad_norm = self._clip_gradients()  # of the summed gradients: equal on every process
                if self.dist.any(not (math.isfinite(sums["loss_total"]) and math.isfinite(grad_norm))):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self.faults.bad(f"iteration {self.iteration + 1}: non-finite loss ({sums['loss_total']}) "
                                    f"or gradient norm ({grad_norm})")
                    continue
                self.faults.good()
                if self.stepper is None:
                    self.optimizer.step()
                self.scheduler.step()
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + v
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm
                steps += 1
        stats = {"faults/skipped_steps": float(skipped)}
        if not steps:
            return stats
        grad_norm_sum = totals.pop("grad_norm")
        totals = self.dist.sum_floats(totals)  # loss parts and token sums of every process
        totals["grad_norm"] = grad_norm_sum
        tokens = totals["tokens"]
        stats.update({
            "loss/policy": totals["loss_policy"] / steps,
            "loss/total": totals["loss_total"] / steps,
            "policy/approxkl": totals["approxkl"] / tokens,
            "policy/policykl": totals["policykl"] / tokens,
            "policy/clipfrac": totals["pg_clipped"] / tokens,
            "policy/ratio_mean": totals["ratio"] / tokens,
            "policy/grad_norm": totals["grad_norm"] / steps,
        })
        if self.has_critic:
            stats.update({
                "loss/value": totals["loss_value"] / steps,
                "val/clipfrac": totals["vf_clipped"] / tokens,
                "val/vpred": totals["vpred"] / tokens,
                "val/error": totals["error"] / tokens,
            })
        return stats

    def accumulate_gradients(self, experience: Experience, rows: torch.Tensor) -> dict[str, float]:
        """Backward the loss of the minibatch ``rows`` (``[b]`` long) in micro-batches.

        Each micro-batch loss is normalised by the valid-token (or sequence) count of the whole
        minibatch, so the accumulated gradient equals that of one forward over all of ``rows``,
        whatever the micro-batch size. Returns summed statistics (floats).
        """
        cfg = self.config
        local_mask = experience.response_mask[rows]
        local_tokens = local_mask.sum()
        # global counts, across processes too; rows left out of the loss count as no sequence
        num_tokens, num_seqs = self.dist.sum(torch.stack([local_tokens, local_mask.any(1).sum()])).tolist()
        sums = {"loss_policy": 0.0, "loss_value": 0.0, "loss_total": 0.0, "tokens": float(local_tokens.item())}
        micros = rows.split(cfg.micro_batch_size)
        for i, micro in enumerate(micros):
            mb = experience.select(micro).trimmed(self.width_multiple)  # no compute on all-padding columns
            with self._gradient_sync(i == len(micros) - 1):
                self._micro_batch_backward(mb, num_tokens, num_seqs, sums)
        return sums

    def _micro_batch_backward(self, mb: Experience, num_tokens: float, num_seqs: int,
                              sums: dict[str, float]) -> None:
        """Loss of one micro-batch, normalised by the minibatch's global counts; backward; add stats to ``sums``."""
        cfg = self.config
        T = mb.response_len
        attention = self.precision.training_attention(self.policy, *mb.input_ids.shape)
        with self.precision.autocast(), checkpointing_active(self.policy, self.critic), attention:  # bf16 under bf16-mixed
            out = response_forward(self._train_policy, mb.input_ids, mb.attention_mask, T, mb.temperature,
                                   self._train_value_head, with_entropy=cfg.entropy_coef > 0, fused=cfg.fused_logprobs)
            critic_out = None
            if self.critic is not None:
                critic_out = critic_values(self._train_critic, mb.input_ids, mb.attention_mask, T)
        agg = dict(aggregation=cfg.effective_loss_aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
                   norm_length=cfg.max_new_tokens)
        pg_loss, pg_stats = self.policy_loss(out.logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                             **agg, is_weights=mb.is_weights)
        loss = pg_loss
        vf_stats: dict[str, torch.Tensor] = {}
        if self.has_critic:
            new_values = out.values if out.values is not None else critic_out
            vf_loss, vf_stats = value_loss(new_values, mb.values, mb.returns, mb.response_mask,
                                           cfg.cliprange_value, **agg)
            loss = loss + cfg.vf_coef * vf_loss
            sums["loss_value"] += vf_loss.item()
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(out.entropy, mb.response_mask, agg["aggregation"], num_tokens,
                                                       num_seqs, cfg.max_new_tokens)
        kl_weight = cfg.kl_loss_coef + (self.kl_ctl.value if kl_in_loss(cfg) else 0.0)
        if kl_weight > 0:
            kl = kl_penalty(out.logprobs, mb.ref_logprobs, cfg.kl_loss_estimator)
            loss = loss + kl_weight * aggregate(kl, mb.response_mask, agg["aggregation"], num_tokens, num_seqs,
                                                cfg.max_new_tokens)
        # DDP averages gradients over processes; the loss is already normalised by the global
        # count, so the sum is wanted: undo the average
        (loss * self.dist.world_size if self.dist.enabled else loss).backward()
        sums["loss_policy"] += pg_loss.item()
        sums["loss_total"] += loss.item()
        for prefix, part in (("pg_", pg_stats), ("vf_", vf_stats)):
            for k, v in part.items():
                key = prefix + k if k == "clipped" else k
                sums[key] = sums.get(key, 0.0) + v.item()

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the frozen model, or the policy with its LoRA adapters disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.policy.disable_adapter():
                yield self.policy

    @property
    def has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def make_scheduler(self):
        """The LR schedule over ``total_steps`` iterations of ``ppo_epochs × minibatches`` optimiser steps."""
        cfg = self.config
        per_iteration = cfg.ppo_epochs * (cfg.batch_size // cfg.backward_batch_size)
        total = cfg.total_steps * per_iteration if cfg.total_steps else None
        return make_scheduler(self.optimizer, cfg.lr_scheduler, cfg.warmup_steps, total)

    def _gradient_sync(self, last_micro_batch: bool):
        """DDP reduces gradients once per optimiser step: skip the collective on all but the last
        micro-batch (``no_sync``). One process: nothing to do."""
        if last_micro_batch or not self.dist.enabled:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in (self._train_policy, self._train_critic, self._train_value_head):
            if hasattr(module, "no_sync"):
                stack.enter_context(module.no_sync())
        return stack

    def _clip_gradients(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        return as_float(torch.nn.utils.clip_grad_norm_(params, max_norm))  # sharded: the norm of the full gradient


__all__ = ["PPOLearner"]
