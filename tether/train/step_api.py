"""The step API of ``PPOTrainer`` (TRL ≤ 0.11's ``generate`` → your reward → ``step``), as functions
of the trainer: what users pass is checked and turned into a ``Rollout`` (step_inputs.py), sampled
through the engine, and handed to ``PPOLearner.learn`` (ppo.py) for one PPO iteration."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from ..algo import masked_sum
from ..compat.trl_trainer import trl_sampling_departures, trl_scores, trl_stats, trl_step_departures
from ..tracking.memory import phase_memory
from ..models.forward import decoder_start_id, response_forward
from ..rewards.base import check_scores
from .step_inputs import (as_id_list, build_rollout, check_groups, engine_logprob_rows, flatten_groups, is_text,
                          output_forms, prompt_token_lists, response_rows, response_token_lists)

# generate() remembers sampled ids for step(); an evaluation loop that never calls step() must not grow it forever
SAMPLE_CACHE_LIMIT = 4096


def generate(trainer, query: Any, length_sampler: Callable[[], int] | None, batch_size: int | None,
             return_prompt: bool, generate_ref_response: bool, remove_padding: bool, gen_kwargs: dict):
    """``PPOTrainer.generate``."""
    single = isinstance(query, str) or (isinstance(query, torch.Tensor) and query.dim() == 1)
    if isinstance(query, torch.Tensor) and query.dim() != 1:
        raise ValueError("generate: query must be a 1-D token tensor or a list of them, got shape "
                         f"{tuple(query.shape)}")
    queries = [query] if single else list(query)
    if not queries:
        raise ValueError("generate: no prompts")
    if trainer.trl_mode:
        for key, message in trl_sampling_departures(gen_kwargs):
            trainer._warn_once(key, message)
    text = is_text(queries)
    prompt_ids = prompt_token_lists(queries, trainer.tokenizer, trainer.config.max_prompt_length,
                                    trainer.config.use_chat_template, trainer._prompt_ids,
                                    trainer.config.prompt_overflow)
    # TRL draws a length_sampler length per batch of 4 (its default); without one, one batch is fastest
    chunk = batch_size or (4 if length_sampler is not None else len(queries))
    start_time = time.perf_counter()
    responses, engine_logprobs, references, params = [], [], [], None
    for start in range(0, len(queries), chunk):
        params = trainer._sampling_params(gen_kwargs, length_sampler)
        cut = params.eos_token_ids + ([trainer.tokenizer.eos_token_id] if remove_padding and not single else [])
        rollout = trainer._sample(prompt_ids[start : start + chunk], params)
        rows = response_rows(rollout, cut)
        responses += rows
        engine_logprobs += engine_logprob_rows(rollout, rows)
        if generate_ref_response:
            with trainer.ppo.reference() as ref:
                references += response_rows(trainer._sample(prompt_ids[start : start + chunk], params, ref), cut)
    trainer._generate_seconds += time.perf_counter() - start_time
    if len(trainer._sampled) > SAMPLE_CACHE_LIMIT:  # generate() called many times without step()
        trainer._sampled.clear()
        trainer._prompt_ids.clear()
    completions = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True) if text else [None] * len(queries)
    for q, p, c, ids, lps in zip(queries, prompt_ids, completions, responses, engine_logprobs):
        trainer._sampled.remember(repr(q) if text else "", p, ids, params.temperature, completion=c,
                                  off_policy=params.off_policy, logprobs=lps)
    heads, with_head = prompt_ids, return_prompt
    if trainer.is_encoder_decoder:  # TRL's form: the decoder sequence, from its start token, never the query
        heads, with_head = [[decoder_start_id(trainer.policy)]] * len(prompt_ids), True
    outs = output_forms(heads, responses, trainer.tokenizer, text, single, with_head, trainer.device)
    if generate_ref_response:
        return outs, output_forms(heads, references, trainer.tokenizer, text, single, with_head, trainer.device)
    return outs


def step(trainer, queries: Sequence[Any], responses: Sequence[Any], scores: Sequence[Any],
         response_masks: Sequence[Any] | None) -> dict[str, Any]:
    """``PPOTrainer.step``: user input -> Rollout -> one PPO iteration (``PPOLearner.learn``) -> stats."""
    queries, responses = flatten_groups(queries, responses)
    check_groups(queries, trainer.config.num_generations)
    n = len(queries)
    if len(responses) != n:
        raise ValueError(f"step: {n} queries but {len(responses)} responses")
    if n != trainer.config.batch_size:
        raise ValueError(f"step: got {n} queries, but config.batch_size is {trainer.config.batch_size}")
    if response_masks is not None and len(response_masks) != n:
        raise ValueError(f"step: {n} responses but {len(response_masks)} response_masks")
    for s in scores:
        if isinstance(s, torch.Tensor) and s.dim() > 1:
            raise ValueError(f"step: scores must be 0- or 1-dimensional tensors, got one of shape {tuple(s.shape)}")
    scores_t = check_scores([s.squeeze() if isinstance(s, torch.Tensor) else s for s in scores], n,
                            source="step: scores")
    prompt_ids = prompt_token_lists(queries, trainer.tokenizer, trainer.config.max_prompt_length,
                                    trainer.config.use_chat_template, trainer._prompt_ids,
                                    trainer.config.prompt_overflow)
    response_ids = response_token_lists(responses, [repr(q) for q in queries], trainer._sampled, trainer.tokenizer)
    given_lens = [len(r) for r in response_ids]
    if trainer.is_encoder_decoder:  # the decoder's start token (generate's first) is not an action of the policy
        start = decoder_start_id(trainer.policy)
        response_ids = [r[1:] if r and r[0] == start else r for r in response_ids]
    if trainer.trl_mode:
        for key, message in trl_step_departures(trainer.config, trainer.is_encoder_decoder):
            trainer._warn_once(key, message)
    _check_on_policy(trainer, prompt_ids, response_ids)
    if trainer.config.filters_groups:
        trainer._warn_once("dynamic_sampling_step", "dynamic sampling: step() trains on the batch it is given, so "
                           "groups whose scores are all equal are left out of the loss but not replaced; train() "
                           "draws more prompts to fill the batch")
    temperature = trainer._sampled.temperature_of(prompt_ids, response_ids, default=trainer.config.temperature)
    masks = None if response_masks is None else [as_id_list(m, "response_masks", i) if not isinstance(m, torch.Tensor)
                                                else m.long().tolist() for i, m in enumerate(response_masks)]
    stop_ids = [] if trainer.trl_mode else trainer._stop_ids()
    rollout = build_rollout(prompt_ids, response_ids, stop_ids, trainer.tokenizer.pad_token_id, trainer.device,
                            temperature, loss_masks=masks, eos_ids=[trainer.tokenizer.eos_token_id],
                            sample_logprobs=trainer._sampled.logprobs_of(prompt_ids, response_ids))
    trainer._sampled.clear()
    trainer._prompt_ids.clear()
    scores_t = scores_t.to(trainer.device)
    if trainer.trl_mode:  # TRL's score scaling and clipping come first: its ppo/mean_scores are of these
        scores_t = trl_scores(scores_t, trainer.config, trainer.running, trainer.dist.sum)
    rollout_memory = phase_memory("rollout", trainer.device)  # after the caller's generation and scoring
    stats = trainer.ppo.learn(rollout, scores_t)
    stats.update(rollout_memory)
    if trainer.lr_scheduler is not None:
        trainer.lr_scheduler.step()
    stats.update(trl_stats(stats, trainer.ppo.last_experience, [len(p) for p in prompt_ids], trainer.dist,
                           arrays=trainer.trl_mode, response_lens=given_lens if trainer.trl_mode else None))
    # TRL logged a step's stats only through log_stats: one row per step, not two
    stats = trainer.record(stats, generate_seconds=trainer._generate_seconds, log=not trainer.trl_mode)
    trainer._generate_seconds = 0.0
    return stats


@torch.no_grad()
def sequence_kl(trainer, queries: Sequence[Any], responses: Sequence[Any]) -> list[float]:
    """``PPOTrainer.sequence_kl``."""
    if len(queries) != len(responses):
        raise ValueError(f"sequence_kl: {len(queries)} queries but {len(responses)} responses")
    prompt_ids = prompt_token_lists(queries, trainer.tokenizer, trainer.config.max_prompt_length,
                                    trainer.config.use_chat_template, trainer._prompt_ids,
                                    trainer.config.prompt_overflow)
    response_ids = response_token_lists(responses, [repr(q) for q in queries], trainer._sampled, trainer.tokenizer)
    temperature = trainer._sampled.temperature_of(prompt_ids, response_ids, default=trainer.config.temperature)
    kls: list[float] = []
    step = trainer.config.micro_batch_size
    for start in range(0, len(queries), step):
        rollout = build_rollout(prompt_ids[start : start + step], response_ids[start : start + step],
                                trainer._stop_ids(), trainer.tokenizer.pad_token_id, trainer.device)
        ids, attn, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        with trainer.precision.autocast():
            logprobs = response_forward(trainer.policy, ids, attn, mask.shape[1], temperature).logprobs
            with trainer.ppo.reference() as ref:
                ref_logprobs = response_forward(ref, ids, attn, mask.shape[1], temperature).logprobs
        kls += masked_sum(logprobs - ref_logprobs, mask, dim=1).tolist()
    return kls


def _check_on_policy(trainer, prompt_ids, response_ids) -> None:
    """Samples drawn greedily or with penalties are not samples of π: refused (TRL programs: warned)."""
    found = trainer._sampled.off_policy_of(prompt_ids, response_ids)
    if not found:
        return
    what = "; ".join(f"{option} (rows {rows[:8]})" for option, rows in found.items())
    message = (f"step: responses sampled with {what} are not samples of the policy's softmax(logits / T), "
               "which PPO's old logprobs describe")
    if not trainer.trl_mode:
        raise ValueError(message + "; sample them with temperature / top_k / top_p only")
    trainer._warn_once("off-policy", message + "; training on them anyway, as TRL did")


__all__ = ["SAMPLE_CACHE_LIMIT", "generate", "sequence_kl", "step"]
