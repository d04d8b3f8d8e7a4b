"""TRL 0.11 ``PPOTrainer`` methods that programs and TRL's own tests call directly, with TRL's
numerics: ``prepare_model_inputs``, ``batched_forward_pass``, ``compute_rewards``, ``_kl_penalty``,
``compute_advantages``, ``loss`` and ``_step_safety_checker``.

``step`` does not use them: tether's iteration (``tether.train.ppo``) computes the same quantities
once, in its own order. These exist so that code written against TRL's trainer internals (custom
loops, diagnostics, tests) gets TRL's answers. Shapes: ``B`` responses, ``L`` padded input length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..algo import entropy_from_logits, logprobs_from_logits, masked_mean, masked_var


def _whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """TRL's ``masked_whiten`` (masked positions keep their whitened value, not 0)."""
    mask = mask.bool()
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return out + mean if not shift_mean else out


class AcceleratedOptimizer(torch.optim.Optimizer):
    """What ``ppo_trainer.optimizer`` was in TRL (accelerate's wrapper): the program's or the default
    optimiser as ``.optimizer``, every call forwarded to it."""

    def __init__(self, optimizer: torch.optim.Optimizer):  # noqa: super().__init__ would re-register params
        self.optimizer = optimizer

    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, value: setattr(self.optimizer, "param_groups", value))
    state = property(lambda self: self.optimizer.state)
    defaults = property(lambda self: self.optimizer.defaults)

    def step(self, closure=None):
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group) -> None:
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"


class AcceleratedScheduler:
    """What ``ppo_trainer.lr_scheduler`` was in TRL: the program's scheduler as ``.scheduler``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getattr__(self, name: str):
        return getattr(self.__dict__["scheduler"], name)

    def step(self, *args, **kwargs):
        return self.scheduler.step(*args, **kwargs)


def step_safety_checker(trainer, batch_size: int | None, queries, responses, scores, masks=None):
    """TRL's ``_step_safety_checker``: lists of tensors, ``batch_size`` long each, on the trainer's
    device; scores squeezed to 0-d (a score of more than one dimension is a ``ValueError``)."""
    for name, tensors in (("queries", queries), ("responses", responses), ("scores", scores)):
        if not isinstance(tensors, list):
            raise ValueError(f"{name} must be a list of tensors - got {type(tensors)}")
        if not isinstance(tensors[0], torch.Tensor):
            raise ValueError(f"Elements in {name} must be tensors - got {type(tensors[0])}")
        if batch_size is not None and len(tensors) != batch_size:
            raise ValueError(f"Batch size ({batch_size}) does not match number of examples - but got "
                             f"{len(tensors)} for: {name}")
    device = trainer.device
    queries = [t.to(device) for t in queries]
    responses = [t.to(device) for t in responses]
    scores = [t.to(device) for t in scores]
    masks = [t.to(device) for t in masks] if masks is not None else None
    for i, score in enumerate(scores):
        if score.dim() > 1:
            raise ValueError(f"Scores must be 1-dimensional - got {score.dim()} for {score}")
        scores[i] = score.squeeze()
    return queries, responses, scores, masks


def _pad(tokenizer, rows: list[torch.Tensor], device) -> dict[str, torch.Tensor]:
    """``rows`` right-padded with the pad id: ``input_ids``, ``attention_mask`` ``[B, L]``. (TRL
    padded on the tokenizer's side, right for GPT-2 and T5; right padding keeps every token at its
    position, so the logprobs do not depend on the batch a row is in, whatever the model's positions.)"""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r.cpu(), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def prepare_model_inputs(trainer, queries, responses) -> dict[str, torch.Tensor]:
    """TRL's ``prepare_model_inputs``: query + response padded (causal), or the queries as encoder
    input and the responses as ``decoder_input_ids`` (encoder-decoder)."""
    if trainer.is_encoder_decoder:
        inputs = _pad(trainer.tokenizer, list(queries), trainer.device)
        decoder = _pad(trainer.tokenizer, list(responses), trainer.device)
        inputs["decoder_input_ids"] = decoder["input_ids"]
        inputs["decoder_attention_mask"] = decoder["attention_mask"]
        return inputs
    return _pad(trainer.tokenizer, [torch.cat([q, r]) for q, r in zip(queries, responses)], trainer.device)


def batched_forward_pass(trainer, model, queries, responses, model_inputs: dict, return_logits: bool = False,
                         response_masks=None):
    """TRL's ``batched_forward_pass``: ``(logprobs [B, L-1], logits [B, L-1, V] or None, values
    [B, L-1], masks [B, L-1])`` in forward batches of ``config.mini_batch_size``; position ``i``
    holds the logprob of token ``i + 1`` and the mask marks the response tokens (times
    ``response_masks``). ``model``: a value-head wrapper (``(logits, loss, values)``)."""
    fbs = trainer.config.mini_batch_size or len(queries)
    out_logprobs, out_logits, out_values, out_masks = [], [], [], []
    model.eval()
    for i in range(math.ceil(len(queries) / fbs)):
        rows = slice(i * fbs, (i + 1) * fbs)
        kwargs = {k: v[rows] for k, v in model_inputs.items()}
        logits, _, values = model(**kwargs)
        key = "decoder_" if trainer.is_encoder_decoder else ""
        input_ids, attention_mask = kwargs[key + "input_ids"], kwargs[key + "attention_mask"]
        logprobs = logprobs_from_logits(logits[:, :-1, :], input_ids[:, 1:])
        masks = torch.zeros_like(attention_mask)
        masks[:, :-1] = attention_mask[:, 1:]
        for j, (query, response) in enumerate(zip(queries[rows], responses[rows])):
            if trainer.is_encoder_decoder:
                start, end = 1, int(attention_mask[j].sum()) - 1  # the decoder's start token is not an action
            else:
                start = len(query) - 1
                if attention_mask[j, 0] == 0:  # left padding
                    start += int(attention_mask[j].nonzero()[0])
                end = start + len(response)
            masks[j, :start] = 0
            masks[j, end:] = 0
            if response_masks is not None:
                masks[j, start:end] = masks[j, start:end] * response_masks[rows][j]
        if return_logits:
            out_logits.append(logits)
        out_values.append(values)
        out_logprobs.append(logprobs)
        out_masks.append(masks)
    return (torch.cat(out_logprobs), torch.cat(out_logits)[:, :-1] if return_logits else None,
            torch.cat(out_values)[:, :-1], torch.cat(out_masks)[:, :-1])


def kl_penalty(trainer, logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """TRL's ``_kl_penalty`` for ``config.kl_penalty``: ``kl`` (log π − log π_ref), ``abs``, ``mse``
    (½·squared) on ``[B, T]`` logprobs; ``full``: KL(π‖π_ref) summed over the vocabulary of
    ``[B, T, V]`` log-distributions."""
    name = trainer.config.kl_penalty
    if name == "kl":
        return logprob - ref_logprob
    if name == "abs":
        return (logprob - ref_logprob).abs()
    if name == "mse":
        return 0.5 * (logprob - ref_logprob).square()
    if name == "full":
        return F.kl_div(ref_logprob, logprob, log_target=True, reduction="none").sum(-1)
    raise NotImplementedError(f"kl_penalty {name!r}")


def compute_rewards(trainer, scores, logprobs, ref_logprobs, masks):
    """TRL's ``compute_rewards``: per-token ``−β·kl`` plus the score on the last unmasked token;
    returns ``(rewards, non_score_rewards, kls)``, each ``[B, T]``."""
    rewards, non_score, kls = [], [], []
    for score, logprob, ref_logprob, mask in zip(scores, logprobs, ref_logprobs, masks):
        kl = kl_penalty(trainer, logprob, ref_logprob)
        kls.append(kl)
        penalty = -trainer.kl_ctl.value * kl
        non_score.append(penalty)
        reward = penalty.clone()
        reward[mask.nonzero()[-1]] += score
        rewards.append(reward)
    return torch.stack(rewards), torch.stack(non_score), torch.stack(kls)


def compute_advantages(trainer, values, rewards, mask):
    """TRL's ``compute_advantages``: GAE over all positions (values and rewards zeroed outside the
    mask; ``whiten_rewards`` scales the rewards first), returns = A + V, advantages whitened;
    returns ``(values, advantages, returns)``."""
    cfg = trainer.config
    values, rewards = values * mask, rewards * mask
    if cfg.whiten_rewards:
        rewards = _whiten(rewards, mask, shift_mean=False)
    last, reversed_adv = 0.0, []
    length = rewards.shape[-1]
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + cfg.gamma * next_values - values[:, t]
        last = delta + cfg.gamma * cfg.lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1]).transpose(0, 1)
    returns = advantages + values
    return values, _whiten(advantages, mask).detach(), returns


def loss(trainer, old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns):
    """TRL's ``loss``: ``(pg_loss, vf_coef·vf_loss, stats)`` — clipped policy loss and ½·clipped
    value loss, masked means over the minibatch (a minibatch whose mean ratio exceeds
    ``ratio_threshold`` gets zero losses)."""
    cfg = trainer.config
    mask = mask.bool()
    vclipped = torch.max(torch.min(vpreds, values + cfg.cliprange_value), values - cfg.cliprange_value)
    vf1, vf2 = (vpreds - returns) ** 2, (vclipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    vf_clipfrac = masked_mean(torch.gt(vf2, vf1).float(), mask)
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    pg_clipfrac = masked_mean(torch.gt(pg2, pg1).float(), mask)
    total = pg_loss + cfg.vf_coef * vf_loss
    if masked_mean(ratio, mask).item() > cfg.ratio_threshold:
        pg_loss, vf_loss, total = pg_loss * 0.0, vf_loss * 0.0, total * 0.0
    stats = {
        "loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach(), "loss/total": total.detach(),
        "policy/entropy": masked_mean(entropy_from_logits(logits), mask).detach(),
        "policy/approxkl": (0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)).detach(),
        "policy/policykl": masked_mean(old_logprobs - logprobs, mask).detach(),
        "policy/clipfrac": pg_clipfrac.detach(), "policy/advantages": advantages.detach(),
        "policy/advantages_mean": masked_mean(advantages, mask).detach(), "policy/ratio": ratio.detach(),
        "returns/mean": masked_mean(returns, mask).detach(), "returns/var": masked_var(returns, mask).detach(),
        "val/vpred": masked_mean(vpreds, mask).detach(), "val/error": masked_mean(vf1, mask).detach(),
        "val/clipfrac": vf_clipfrac.detach(), "val/mean": masked_mean(values, mask).detach(),
        "val/var": masked_var(values, mask).detach(),
    }
    return pg_loss, cfg.vf_coef * vf_loss, stats


__all__ = ["AcceleratedOptimizer", "AcceleratedScheduler", "batched_forward_pass", "compute_advantages",
           "compute_rewards", "kl_penalty", "loss", "prepare_model_inputs", "step_safety_checker"]
