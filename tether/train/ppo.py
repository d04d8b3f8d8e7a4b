"""PPOTrainer: one PPO-for-RLHF iteration, readable top to bottom.

    rollout (generate, or the user's responses in ``step``)
      -> make_experience: one no-grad forward each for logprobs, ref_logprobs, values
      -> per-token rewards (−β·KL, score on the last token) -> GAE -> whitened advantages
         (or, without a critic, GRPO / RLOO / REINFORCE++ advantages: estimators.py)
      -> ppo_epochs × shuffled minibatches × accumulation micro-batches: clipped losses, one
         optimiser step per minibatch with the loss normalised by its global valid-token count
      -> KL controller update -> stats dict

``step()`` (the step API) and ``train()`` (the full loop) share ``_iteration``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..algo import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    kl_penalty,
    masked_sum,
    ppo_policy_loss,
    value_loss,
    whiten,
)
from ..config import PPOConfig
from ..data.prompts import DataError, left_pad, limit_prompt_lengths, load_prompts, tokenize_prompts
from ..models.critic import VALUE_HEAD_FILE, ValueHead, ValueModel, hidden_size_of, is_peft, unwrap_peft
from ..models.forward import critic_values, response_forward
from ..models.loading import BASE_FILE, prepare_tokenizer
from ..rewards.base import NonFiniteRewardError, RewardError, call_reward, check_scores, offset_scores_hint
from ..rollout import Experience, HFEngine, Rollout, SamplingParams
from ..rollout.types import trim_padding_columns
from ..tracking import (checkpoint_name, format_stats, latest_checkpoint, prune_checkpoints,
                        truncate_jsonl, write_atomically, write_json)
from ..tracking.model_card import write_model_card
from ..tracking.sinks import check_report_to, make_sinks
from .allocator import keep_freed_memory
from .distributed import Distributed
from .checkpointing import DataPosition, capture_rng, fingerprint, read_training_state, write_training_state
from .estimators import estimate_advantages, kl_in_loss
from .faults import FaultMonitor, NumericalError, first_nonfinite_parameter
from .optim import make_optimizer, make_scheduler
from .signals import StopRequests, TrainingInterrupted
from .step_inputs import SampledResponses, build_rollout, is_text, prompt_token_lists, response_token_lists

logger = logging.getLogger(__name__)

# generate() keyword arguments that TRL-era code passes; mapped onto SamplingParams or accepted as no-ops
_GEN_ALIASES = {"max_new_tokens", "temperature", "top_k", "top_p", "min_new_tokens"}
_GEN_IGNORED = {"do_sample", "pad_token_id", "eos_token_id", "min_length", "use_cache"}
# generate() keyword arguments that would sample from another distribution than the softmax(z / T)
# that scoring computes: the "old" logprobs would be wrong, so they are refused
_GEN_OFF_POLICY = {"repetition_penalty", "no_repeat_ngram_size", "min_p", "typical_p", "epsilon_cutoff",
                   "eta_cutoff", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                   "encoder_repetition_penalty", "num_beams", "num_beam_groups", "diversity_penalty",
                   "penalty_alpha", "guidance_scale", "forced_bos_token_id", "forced_eos_token_id",
                   "exponential_decay_length_penalty", "renormalize_logits", "top_h"}
# generate() remembers sampled ids for step(); an evaluation loop that never calls step() must not grow it forever
_SAMPLE_CACHE_LIMIT = 4096


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PPOTrainer:
    """PPO for RLHF on any Hugging Face causal LM.

    ``PPOTrainer(config, model, tokenizer)`` is the step API of the TRL ≤ 0.11 trainer:
    ``generate(prompts)`` then ``step(prompts, responses, rewards)``. The TRL 0.11 positional
    order ``PPOTrainer(config, model, ref_model, tokenizer, dataset)`` is accepted too.

    Keyword arguments:
        ref_model: frozen reference; default a frozen copy of ``model``, or — when ``model`` is a
            peft model — the same weights with adapters disabled (no second copy).
        critic: a ``ValueModel``; default built per ``config.value_model`` / ``config.critic_init``.
        reward_fn: ``fn(prompts, completions) -> scores`` used by ``train()``; or
        reward_model: a sequence-classification model (``RewardModelScorer`` or raw model + its
            tokenizer via ``reward_tokenizer``).
        dataset: prompts for ``train()`` (JSONL path, ``datasets.Dataset`` or list).
        engine: rollout engine (default: ``HFEngine`` on the policy).
        log_dir: when set, metrics go to ``log_dir/metrics.jsonl`` (``train(output_dir=...)`` sets it too).
        report_to: extra metric sinks: any of ``tensorboard``, ``wandb``, ``mlflow``.
    """

    def __init__(self, config: PPOConfig, model, tokenizer=None, *trl_positional, ref_model=None,
                 critic: ValueModel | None = None, reward_fn: Callable | None = None, reward_model=None,
                 reward_tokenizer=None, dataset=None, engine=None, log_dir: str | Path | None = None,
                 report_to: Sequence[str] = ()):
        if isinstance(tokenizer, nn.Module):  # TRL 0.11 order: (config, model, ref_model, tokenizer, dataset)
            ref_model, tokenizer = tokenizer, (trl_positional[0] if trl_positional else None)
            dataset = trl_positional[1] if len(trl_positional) > 1 else dataset
        elif trl_positional:
            dataset = trl_positional[0]
        if tokenizer is None:
            raise TypeError("PPOTrainer needs a tokenizer: PPOTrainer(config, model, tokenizer)")
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a tether.PPOConfig, got {type(config).__name__}")
        self.config = config
        torch.manual_seed(config.seed)
        self.tokenizer = tokenizer
        prepare_tokenizer(tokenizer)
        self.policy = model.eval()  # eval mode throughout: dropout off in every forward [H24]
        self.device = next(model.parameters()).device
        if config.reuse_freed_memory and self.device.type == "cpu":
            keep_freed_memory()

        if ref_model is not None:
            self.ref_model = _freeze(ref_model)
        elif is_peft(model):
            self.ref_model = None  # adapters disabled = the base model
        else:
            self.ref_model = _freeze(copy.deepcopy(model))

        self.reward_fn = self._make_reward(reward_fn, reward_model, reward_tokenizer)
        self.value_head: ValueHead | None = None
        self.critic: ValueModel | None = None
        if not config.needs_critic:
            if critic is not None:
                raise ValueError(f"algorithm={config.algorithm!r} uses no critic; do not pass critic=")
        elif config.value_model == "head":
            self.value_head = ValueHead(hidden_size_of(unwrap_peft(model).config)).to(self.device)
        elif critic is not None:
            self.critic = critic.eval()
        elif config.critic_init == "reward_model":
            rm = getattr(self.reward_fn, "model", reward_model)
            if rm is None:
                raise ValueError("critic_init='reward_model' needs a reward_model")
            self._check_same_vocab(getattr(self.reward_fn, "tokenizer", reward_tokenizer))
            self.critic = ValueModel.from_reward_model(rm, shift=getattr(self.reward_fn, "shift", 0.0),
                                                       scale=getattr(self.reward_fn, "scale", 1.0)).to(self.device).eval()
        else:
            self.critic = ValueModel.from_causal_lm(model).to(self.device).eval()
        critic_module = self.critic if self.critic is not None else self.value_head
        critic_params = critic_module.parameters() if critic_module is not None else []

        self.optimizer = make_optimizer(self.policy.parameters(), critic_params,
                                        config.learning_rate, config.critic_learning_rate,
                                        config.weight_decay, config.adam_eps)
        self.scheduler = None  # built lazily: train() may fill in total_steps first
        if config.adaptive_kl:
            self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(config.kl_coef)
        self.engine = engine if engine is not None else HFEngine(self.policy)
        self.dataset = dataset
        # data parallel: DDP copies of the trained modules for the loss forward/backward; scoring,
        # generation and saving use the modules themselves. One process: the same objects.
        self.dist = Distributed.from_environment()
        self._train_policy = self.dist.wrap(self.policy)
        self._train_critic = self.dist.wrap(self.critic)
        self._train_value_head = self.dist.wrap(self.value_head)
        if self.dist.enabled:
            torch.manual_seed(config.seed + self.dist.rank)  # each rank samples its own responses
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)  # equal on all ranks: one data order
        self.report_to = check_report_to(report_to)
        self.sink = self._make_sink(log_dir) if log_dir else None
        self.iteration = 0
        self._warned_offset_scores = False
        self._sampled = SampledResponses()  # what generate() sampled, and at which temperature, for step()
        self._prompt_ids: dict = {}  # repr(prompt) -> prompt ids, so step() does not re-tokenise
        self._generate_seconds = 0.0
        self.faults = FaultMonitor(config.max_bad_steps)
        self.last_stats: dict[str, float] = {}  # of the latest iteration (shown in model cards)
        self._boundary: tuple[dict, DataPosition] | None = None  # RNG + data position a checkpoint stands for

    # ------------------------------------------------------------------ public API

    def generate(self, query: Any, length_sampler: Callable[[], int] | None = None,
                 return_prompt: bool = True, batch_size: int | None = None, **gen_kwargs):
        """Sample responses.

        ``query``: a prompt string, a list of them (or of chat message lists) -> completion
        string(s); a 1-D token-id tensor -> ``[1, L]`` tensor; a list of 1-D tensors -> list of
        1-D tensors (TRL ≤ 0.11). Token outputs include the prompt unless ``return_prompt=False``.
        ``gen_kwargs``: max_new_tokens, temperature, top_k, top_p, min_new_tokens (others that TRL
        code passes — do_sample, pad_token_id, eos_token_id, min_length — are accepted and ignored:
        PPO always samples). ``step`` scores these samples at the temperature they were drawn at.
        """
        single = isinstance(query, str) or (isinstance(query, torch.Tensor) and query.dim() == 1)
        queries = [query] if single else list(query)
        if not queries:
            raise ValueError("generate: no prompts")
        params = self._sampling_params(gen_kwargs, length_sampler)
        text = is_text(queries)
        prompt_ids = prompt_token_lists(queries, self.tokenizer, self.config.max_prompt_length,
                                        self.config.use_chat_template, self._prompt_ids,
                                        self.config.prompt_overflow)
        chunk = batch_size or len(queries)
        start_time = time.perf_counter()
        responses: list[list[int]] = []
        for start in range(0, len(queries), chunk):
            rollout = self._sample(prompt_ids[start : start + chunk], params)
            responses += [row[m].tolist() for row, m in zip(rollout.response_ids, rollout.response_mask)]
        self._generate_seconds += time.perf_counter() - start_time
        if len(self._sampled) > _SAMPLE_CACHE_LIMIT:  # generate() called many times without step()
            self._sampled.clear()
            self._prompt_ids.clear()
        if text:
            completions = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            for q, p, c, ids in zip(queries, prompt_ids, completions, responses):
                self._sampled.remember(repr(q), p, ids, params.temperature, completion=c)
            return completions[0] if single else completions
        for p, r in zip(prompt_ids, responses):
            self._sampled.remember("", p, r, params.temperature)
        outs = [torch.tensor((p if return_prompt else []) + r, dtype=torch.long, device=self.device)
                for p, r in zip(prompt_ids, responses)]
        return outs[0].unsqueeze(0) if single else outs

    def step(self, queries: Sequence[Any], responses: Sequence[Any], scores: Sequence[Any],
             response_masks=None) -> dict[str, float]:
        """One PPO iteration on given prompts, responses and scores; returns the stats dict.

        queries: prompt strings / chat messages, or 1-D token-id tensors (TRL ≤ 0.11).
        responses: completion strings (ideally from ``generate``), or 1-D response token tensors.
        scores: one number or scalar tensor per response.

        Group estimators (``num_generations = k > 1``): pass each prompt k times in a row with its k
        responses, or each prompt once with a list of k responses (``responses[i]`` a list); scores
        are then one per response, flattened in the same order.
        """
        if response_masks is not None:
            raise NotImplementedError("response_masks (TRL 0.11) are not supported; pass unpadded responses")
        queries, responses = _flatten_groups(queries, responses)
        self._check_groups(queries)
        n = len(queries)
        if len(responses) != n:
            raise ValueError(f"step: {n} queries but {len(responses)} responses")
        if n != self.config.batch_size:
            raise ValueError(f"step: got {n} queries, but config.batch_size is {self.config.batch_size}")
        scores_t = check_scores(scores, n, source="step: scores")
        prompt_ids = prompt_token_lists(queries, self.tokenizer, self.config.max_prompt_length,
                                        self.config.use_chat_template, self._prompt_ids,
                                        self.config.prompt_overflow)
        response_ids = response_token_lists(responses, [repr(q) for q in queries], self._sampled, self.tokenizer)
        temperature = self._sampled.temperature_of(prompt_ids, response_ids, default=self.config.temperature)
        rollout = build_rollout(prompt_ids, response_ids, self._stop_ids(), self.tokenizer.pad_token_id,
                                self.device, temperature)
        self._sampled.clear()
        self._prompt_ids.clear()
        stats = self._iteration(rollout, scores_t.to(self.device), generate_seconds=self._generate_seconds)
        self._generate_seconds = 0.0
        return stats

    def train(self, dataset=None, reward_fn: Callable | None = None, epochs: int = 1,
              max_iterations: int | None = None, output_dir: str | Path | None = None,
              save_every: int = 0, keep_checkpoints: int = 0, resume: str | Path | None = None,
              progress: bool | None = None, prompt_field: str = "prompt",
              prompt_formatter: Callable[[dict], Any] | None = None) -> list[dict[str, float]]:
        """Run PPO over a prompt dataset; returns the stats of the iterations this call ran.

        dataset: JSONL / CSV / Parquet path, ``datasets.Dataset`` (or ``save_to_disk`` directory), or
            a list of prompts (default: the constructor's). ``prompt_field`` names the column that holds
            the prompt; ``prompt_formatter(row) -> prompt`` builds it from the whole row instead.
        reward_fn: ``fn(prompts, completions) -> scores`` (default: the constructor's reward).
        output_dir: gets ``metrics.jsonl``, ``samples.jsonl``, ``final/`` and resumable checkpoints
            ``checkpoints/step-N`` every ``save_every`` iterations (the newest ``keep_checkpoints``
            kept; 0 keeps all). With an output_dir, SIGINT/SIGTERM finish the iteration, write a
            checkpoint and raise ``TrainingInterrupted``; a reward error or too many non-finite steps
            write one (of the last complete iteration) before raising.
        resume: ``"latest"`` (newest checkpoint under ``output_dir/checkpoints``) or a checkpoint
            directory: continue exactly where it stopped — same data order, RNG streams, optimiser
            and KL state; log rows written after it are removed. ``max_iterations`` counts from the
            start of the run, not of the resumed part.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        prompts = load_prompts(dataset if dataset is not None else self.dataset, prompt_field, prompt_formatter)
        reward = reward_fn if reward_fn is not None else self.reward_fn
        if reward is None:
            raise ValueError("train() needs a reward: pass reward_fn= or reward_model=")
        start_position = DataPosition(num_prompts=len(prompts), fingerprint=fingerprint(prompts))
        token_ids = tokenize_prompts(prompts, self.tokenizer, None, cfg.use_chat_template)
        token_ids, kept = limit_prompt_lengths(token_ids, cfg.max_prompt_length, cfg.prompt_overflow)
        prompts = [prompts[i] for i in kept]
        k = cfg.num_generations
        bs = cfg.batch_size // k  # prompts per iteration; each is sampled k times
        global_bs = bs * self.dist.world_size  # each rank takes its slice of a global batch
        if len(prompts) < global_bs:
            raise ValueError(f"the dataset has {len(prompts)} prompts, fewer than the {global_bs} an iteration needs "
                             f"(batch_size={cfg.batch_size} / num_generations={k} x {self.dist.world_size} processes)")
        per_epoch = len(prompts) // global_bs
        if len(prompts) % global_bs:
            logger.warning("%d prompts do not fill a batch of %d and are skipped each epoch",
                           len(prompts) % global_bs, global_bs)
        total = per_epoch * epochs if max_iterations is None else min(max_iterations, per_epoch * epochs)
        if cfg.total_steps is None:
            cfg.total_steps = total
        out = Path(output_dir) if output_dir else None
        own_sink = out is not None and self.sink is None
        if own_sink:
            self.sink = self._make_sink(out)
        position = start_position if resume is None else self._resume(resume, out, start_position, global_bs)
        params = self._sampling_params({}, None)
        history: list[dict[str, float]] = []
        saved: Path | None = None
        bar = tqdm(total=total, initial=position.batches, desc="ppo", unit="it",
                   disable=not (show_progress(progress) and self.dist.is_main))
        stop_signal = None
        with StopRequests(enabled=out is not None) as stop:
            while position.batches < total:
                if out is not None and self.dist.any(stop.requested is not None):  # every rank stops together
                    stop_signal = stop.requested or "SIGTERM"
                    break
                if position.order is None:
                    order = torch.randperm(len(prompts), generator=self.shuffle_generator).tolist()
                    position = dataclasses.replace(position, order=order)
                self._boundary = (capture_rng(self.shuffle_generator), position)
                start = position.offset + self.dist.rank * bs
                rows = position.order[start : start + bs]
                idx = [i for i in rows for _ in range(k)]  # groups of k rows
                try:
                    stats = self._train_iteration([prompts[i] for i in idx], [token_ids[i] for i in idx],
                                                  reward, params, out)
                except (RewardError, NumericalError) as err:
                    if out is not None:  # nothing lost: the state of the last complete iteration
                        path = self._save_run_checkpoint(out, keep_checkpoints)
                        err.args = (f"{err.args[0]}\n(checkpoint of the last complete iteration: {path}; "
                                    "continue with resume='latest' / --resume)",)
                    raise
                position = position.advanced(global_bs, len(prompts))
                self._boundary = (capture_rng(self.shuffle_generator), position)
                if stats is not None:
                    history.append(stats)
                    bar.set_postfix_str(format_stats(stats, ("env/reward_mean", "objective/kl")))
                    if bar.disable and self.dist.is_main and (self.iteration % 10 == 0 or self.iteration in (1, total)):
                        logger.info("iteration %d/%d %s", self.iteration, total, format_stats(stats))
                bar.update(1)
                if out is not None and save_every and self.iteration % save_every == 0:
                    saved = self._save_run_checkpoint(out, keep_checkpoints)
            bar.close()
            if stop_signal is not None:
                if saved is None or saved.name != checkpoint_name(self.iteration):
                    saved = self._save_run_checkpoint(out, keep_checkpoints)
                raise TrainingInterrupted(stop_signal, saved)
        if out is not None:
            self.save_pretrained(out / "final")
        if own_sink and self.sink is not None:
            self.sink.close()
            self.sink = None
        return history

    def _make_sink(self, run_dir: str | Path):
        """metrics.jsonl + the report_to sinks, on the main process only."""
        if not self.dist.is_main:
            return None
        return make_sinks(run_dir, self.report_to, dataclasses.asdict(self.config))

    def _train_iteration(self, prompts: list, token_ids: list[list[int]], reward: Callable,
                         params: SamplingParams, out: Path | None) -> dict[str, float] | None:
        """Sample, score and update on one batch; None when non-finite scores skip the iteration."""
        t0 = time.perf_counter()
        rollout = self._sample(token_ids, params)
        t_gen = time.perf_counter() - t0
        completions = self._decode(rollout)
        t0 = time.perf_counter()
        failure: RewardError | None = None
        try:
            scores = call_reward(reward, prompts, completions).to(self.device)
        except RewardError as err:
            failure = err
        if self.dist.any(failure is not None):  # one rank's bad reward stops or skips every rank
            if failure is None:
                failure = RewardError("the reward failed on another process (see its log)")
            if not isinstance(failure, NonFiniteRewardError):
                raise failure
            self.faults.bad(f"iteration {self.iteration + 1}: {failure}")
            return None
        t_reward = time.perf_counter() - t0
        stats = self._iteration(rollout, scores, generate_seconds=t_gen, reward_seconds=t_reward)
        if out is not None and self.dist.is_main:
            self._log_samples(out / "samples.jsonl", prompts, completions, scores)
        return stats

    def _resume(self, resume: str | Path, out: Path | None, expected: DataPosition, global_bs: int) -> DataPosition:
        if str(resume) == "latest":
            if out is None:
                raise ValueError("resume='latest' needs output_dir (the run directory to look in)")
            path = latest_checkpoint(out / "checkpoints")
            if path is None:
                raise FileNotFoundError(f"resume: no checkpoint under {out / 'checkpoints'}")
        else:
            path = Path(resume)
        position = self.load_checkpoint(path)
        if position is None:
            raise ValueError(f"{path}: written outside train() (no data position); it cannot resume train()")
        if (position.num_prompts, position.fingerprint) != (expected.num_prompts, expected.fingerprint):
            raise DataError(f"{path} was written for a dataset of {position.num_prompts} prompts (fingerprint "
                            f"{position.fingerprint}); this dataset has {expected.num_prompts} "
                            f"({expected.fingerprint}). Resume with the same prompts.")
        if position.offset % global_bs:
            logger.warning("%s: %d prompts of the epoch were used, not a multiple of this run's global batch %d "
                           "(another number of processes?); continuing from prompt %d", path, position.offset,
                           global_bs, position.offset)
        if out is not None and self.dist.is_main:
            dropped = truncate_jsonl(out / "metrics.jsonl", "step", self.iteration)
            dropped += truncate_jsonl(out / "samples.jsonl", "iteration", self.iteration)
            if dropped:
                logger.info("removed %d log rows written after iteration %d", dropped, self.iteration)
        logger.info("resumed from %s: iteration %d, epoch %d, prompt %d", path, self.iteration, position.epoch,
                    position.offset)
        return position

    def _save_run_checkpoint(self, out: Path, keep: int) -> Path:
        path = self.save_checkpoint(out / "checkpoints" / checkpoint_name(self.iteration))
        if self.dist.is_main:
            for old in prune_checkpoints(out / "checkpoints", keep):
                logger.debug("removed old checkpoint %s", old)
            logger.info("checkpoint %s", path)
        return path

    def log_stats(self, stats: dict, batch: dict, rewards, columns_to_log: Sequence[str] = ("query", "response")) -> None:
        """TRL ≤ 0.11 compatibility: ``step`` already logged ``stats``; this adds the batch's
        query/response/reward rows to ``samples.jsonl`` next to ``metrics.jsonl`` (when logging)."""
        if self.sink is None:
            return
        queries, responses = (list(batch.get(c, [])) for c in columns_to_log[:2])
        scores = [float(r.item() if hasattr(r, "item") else r) for r in rewards]
        path = self.sink.path.parent / "samples.jsonl"
        with path.open("a", encoding="utf-8") as handle:
            for q, r, sc in zip(queries, responses, scores):
                handle.write(json.dumps({"iteration": self.iteration, "prompt": q if isinstance(q, (str, list)) else
                                         str(q), "completion": r if isinstance(r, str) else str(r), "score": sc}) + "\n")

    @torch.no_grad()
    def sequence_kl(self, queries: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        """KL of the policy to the reference on given responses, one number (nats) per response:
        ``Σ_t log π(y_t|·) − log π_ref(y_t|·)`` over the valid response tokens, at the
        temperature they were sampled at (``config.temperature`` for responses not from ``generate``).
        For responses sampled from the policy (``generate``) its mean is an unbiased
        estimate of KL(π‖π_ref) per sequence, the same quantity as ``objective/kl``."""
        if len(queries) != len(responses):
            raise ValueError(f"sequence_kl: {len(queries)} queries but {len(responses)} responses")
        prompt_ids = prompt_token_lists(queries, self.tokenizer, self.config.max_prompt_length,
                                        self.config.use_chat_template, self._prompt_ids,
                                        self.config.prompt_overflow)
        response_ids = response_token_lists(responses, [repr(q) for q in queries], self._sampled, self.tokenizer)
        temperature = self._sampled.temperature_of(prompt_ids, response_ids, default=self.config.temperature)
        kls: list[float] = []
        step = self.config.micro_batch_size
        for start in range(0, len(queries), step):
            rollout = build_rollout(prompt_ids[start : start + step], response_ids[start : start + step],
                                    self._stop_ids(), self.tokenizer.pad_token_id, self.device)
            ids, attn, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
            logprobs = response_forward(self.policy, ids, attn, mask.shape[1], temperature).logprobs
            with self._reference() as ref:
                ref_logprobs = response_forward(ref, ids, attn, mask.shape[1], temperature).logprobs
            kls += masked_sum(logprobs - ref_logprobs, mask, dim=1).tolist()
        return kls

    def save_pretrained(self, directory: str | Path, _extra: Callable[[Path], None] | None = None) -> Path:
        """Write an HF-format checkpoint atomically: policy (or its peft adapters) and tokenizer at
        the top, the critic under ``critic/`` (or ``value_head.safetensors``), trainer state JSON.
        Refuses (``NumericalError``) to write weights holding NaN/inf. Under data parallelism every
        process calls it; the first writes, the others wait."""
        bad = first_nonfinite_parameter([("", self.policy), ("critic.", self.critic),
                                         ("value_head.", self.value_head)])
        if bad is not None:
            raise NumericalError(f"refusing to save {directory}: parameter {bad} is not finite")

        def write(tmp: Path) -> None:
            self.policy.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            source = getattr(self.policy, "_tether_source", None)
            adapters = is_peft(self.policy)
            if adapters and source:
                write_json(tmp / BASE_FILE, source)
            write_model_card(tmp, "adapter" if adapters else "policy",
                             base_model=(source or {}).get("name_or_path") or self.config.model_name,
                             config=dataclasses.asdict(self.config), metrics=self.last_stats, final_path=directory)
            if self.critic is not None:
                self.critic.save_pretrained(tmp / "critic")
            if self.value_head is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()},
                          tmp / VALUE_HEAD_FILE)
            if _extra is not None:
                _extra(tmp)
            else:
                write_json(tmp / "tether_state.json", {"iteration": self.iteration,
                                                       "kl_ctl": self.kl_ctl.state_dict(),
                                                       "model_name": self.config.model_name})

        if self.dist.is_main:
            write_atomically(directory, write)
        self.dist.barrier()
        return Path(directory)

    def save_checkpoint(self, directory: str | Path) -> Path:
        """A resumable checkpoint: ``save_pretrained``'s files plus optimiser, scheduler, KL
        controller, RNG states, fault counters and (inside ``train()``) the data position, all as of
        the last iteration boundary. ``load_checkpoint`` (or ``train(resume=...)``) reads it back."""
        rng, position = self._boundary if self._boundary else (capture_rng(self.shuffle_generator), None)
        rngs = self.dist.gather_objects(rng)  # one RNG state per process
        return self.save_pretrained(directory, _extra=lambda tmp: write_training_state(self, tmp, rngs, position))

    def load_checkpoint(self, directory: str | Path) -> DataPosition | None:
        """Load a ``save_checkpoint`` directory into this trainer (built from the same config and base
        model, so the reference model is the original one). Returns the saved data position."""
        return read_training_state(self, directory)

    # ------------------------------------------------------------------ one PPO iteration

    def _iteration(self, rollout: Rollout, scores: torch.Tensor, generate_seconds: float = 0.0,
                   reward_seconds: float = 0.0) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.scheduler is None:
            self.scheduler = self._make_scheduler()
        experience, stats = self.make_experience(rollout, scores)
        stats.update(self.ppo_update(experience))
        self.kl_ctl.update(stats["objective/kl"], rollout.prompt_ids.shape[0] * self.dist.world_size)
        self.iteration += 1
        stats["time/generate"] = generate_seconds
        stats["time/reward"] = reward_seconds
        stats["time/step"] = time.perf_counter() - t0
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.last_stats = stats
        if self.sink is not None:
            self.sink.log(self.iteration, stats)
        return stats

    @torch.no_grad()
    def make_experience(self, rollout: Rollout, scores: torch.Tensor) -> tuple[Experience, dict[str, float]]:
        """Score a rollout once (no grad, dropout off): logprobs, ref logprobs, values, then rewards,
        GAE and whitened advantages. scores: ``[B]`` raw sequence scores. Logits are divided by the
        temperature the rollout was sampled at [H24] (``config.temperature`` when unknown)."""
        cfg = self.config
        temperature = rollout.temperature if rollout.temperature is not None else cfg.temperature
        input_ids, attention_mask, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        T = mask.shape[1]
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        for rows in torch.arange(input_ids.shape[0], device=self.device).split(cfg.micro_batch_size):
            # drop the columns that are padding in every row of this micro-batch; pad the outputs back to T
            ids, attn, t = trim_padding_columns(input_ids[rows], attention_mask[rows], mask[rows])
            out = response_forward(self.policy, ids, attn, t, temperature, self.value_head,
                                   with_entropy=True)
            with self._reference() as ref:
                ref_out = response_forward(ref, ids, attn, t, temperature)
            if out.values is not None:
                row_values = out.values
            elif self.critic is not None:
                row_values = critic_values(self.critic, ids, attn, t)
            else:
                row_values = torch.zeros_like(out.logprobs)
            for outputs, x in ((logprobs, out.logprobs), (entropy, out.entropy), (ref_logprobs, ref_out.logprobs),
                               (values, row_values)):
                outputs.append(torch.nn.functional.pad(x, (0, T - t)))
        logprobs, ref_logprobs = torch.cat(logprobs), torch.cat(ref_logprobs)
        values = torch.where(mask, torch.cat(values), 0.0)
        entropy = torch.cat(entropy)

        shaped = scores.float()
        if cfg.missing_eos_score is not None:
            shaped = torch.where(rollout.ended, shaped, torch.full_like(shaped, cfg.missing_eos_score))
        if cfg.whiten_scores:
            shaped = whiten(shaped, torch.ones_like(shaped, dtype=torch.bool), all_reduce=self.dist.sum)
        if cfg.score_clip is not None:
            shaped = shaped.clamp(-cfg.score_clip, cfg.score_clip)
        kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator), 0.0)
        advantages, returns, rewards = estimate_advantages(cfg, shaped, kl, values, mask, self.kl_ctl.value,
                                                           all_reduce=self.dist.sum)
        experience = Experience(input_ids, attention_mask, mask, logprobs, ref_logprobs, values, advantages, returns,
                                temperature=temperature)
        # per-row numbers, gathered from every process: the statistics are those of the global batch
        rows = self.dist.gather(torch.stack([
            scores.float(), masked_sum(kl, mask, dim=1), rewards.sum(1), mask.sum(1).float(),
            rollout.ended.float(), masked_sum(entropy, mask, dim=1)], dim=1))
        row_scores, kl_per_seq, rlhf, lengths, ended, entropy_sums = rows.unbind(1)
        if not cfg.whiten_scores and not self._warned_offset_scores and row_scores.numel() > 1:
            self._warned_offset_scores = True  # once per trainer: the first batch tells
            hint = offset_scores_hint(row_scores.mean().item(), row_scores.std().item())
            if hint and self.dist.is_main:
                logger.warning(hint)
        stats = {
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
        return experience, stats

    def ppo_update(self, experience: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled minibatches; one optimiser step per minibatch.

        A minibatch whose loss or gradient norm is not finite is skipped (no optimiser or scheduler
        step) and counted by ``self.faults``, which stops the run after too many in a row."""
        cfg = self.config
        batch = experience.input_ids.shape[0]
        totals: dict[str, float] = {}
        steps = skipped = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(batch, generator=self.shuffle_generator).to(self.device)
            for minibatch in order.split(cfg.backward_batch_size):
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
            "policy/clipfrac": totals["pg_clipped"] / tokens,
            "policy/ratio_mean": totals["ratio"] / tokens,
            "policy/grad_norm": totals["grad_norm"] / steps,
        })
        if self._has_critic:
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
        local_tokens = experience.response_mask[rows].sum()
        num_tokens = self.dist.sum(local_tokens).item()  # global count: across processes too
        num_seqs = rows.numel() * self.dist.world_size
        sums = {"loss_policy": 0.0, "loss_value": 0.0, "loss_total": 0.0, "tokens": float(local_tokens.item())}
        micros = rows.split(cfg.micro_batch_size)
        for i, micro in enumerate(micros):
            mb = experience.select(micro).trimmed()  # no compute on all-padding columns
            with self._gradient_sync(i == len(micros) - 1):
                self._micro_batch_backward(mb, num_tokens, num_seqs, sums)
        return sums

    def _micro_batch_backward(self, mb: Experience, num_tokens: float, num_seqs: int,
                              sums: dict[str, float]) -> None:
        """Loss of one micro-batch, normalised by the minibatch's global counts; backward; add stats to ``sums``."""
        cfg = self.config
        T = mb.response_len
        out = response_forward(self._train_policy, mb.input_ids, mb.attention_mask, T, mb.temperature,
                               self._train_value_head, with_entropy=cfg.entropy_coef > 0)
        agg = dict(aggregation=cfg.loss_aggregation, num_tokens=num_tokens, num_seqs=num_seqs)
        pg_loss, pg_stats = ppo_policy_loss(out.logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                            cfg.cliprange, cfg.dual_clip, **agg)
        loss = pg_loss
        vf_stats: dict[str, torch.Tensor] = {}
        if self._has_critic:
            new_values = out.values if out.values is not None else critic_values(
                self._train_critic, mb.input_ids, mb.attention_mask, T)
            vf_loss, vf_stats = value_loss(new_values, mb.values, mb.returns, mb.response_mask,
                                           cfg.cliprange_value, **agg)
            loss = loss + cfg.vf_coef * vf_loss
            sums["loss_value"] += vf_loss.item()
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(out.entropy, mb.response_mask, cfg.loss_aggregation,
                                                       num_tokens, num_seqs)
        kl_weight = cfg.kl_loss_coef + (self.kl_ctl.value if kl_in_loss(cfg) else 0.0)
        if kl_weight > 0:
            kl = kl_penalty(out.logprobs, mb.ref_logprobs, cfg.kl_loss_estimator)
            loss = loss + kl_weight * aggregate(kl, mb.response_mask, cfg.loss_aggregation,
                                                num_tokens, num_seqs)
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

    @contextlib.contextmanager
    def _reference(self):
        """The reference policy: the frozen model, or the policy with its LoRA adapters disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def _check_groups(self, queries: Sequence[Any]) -> None:
        k = self.config.num_generations
        if k == 1:
            return
        for start in range(0, len(queries) - k + 1, k):
            keys = {repr(q.tolist()) if isinstance(q, torch.Tensor) else repr(q) for q in queries[start : start + k]}
            if len(keys) > 1:
                raise ValueError(f"step: rows {start}..{start + k - 1} should be {k} responses to one prompt "
                                 f"(num_generations={k}); repeat each prompt {k} times in a row")

    @property
    def _has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _clip_gradients(self) -> float:
        params = [p for p in self._trainable_parameters() if p.grad is not None]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _make_scheduler(self):
        cfg = self.config
        per_iteration = cfg.ppo_epochs * (cfg.batch_size // cfg.backward_batch_size)
        total = cfg.total_steps * per_iteration if cfg.total_steps else None
        return make_scheduler(self.optimizer, cfg.lr_scheduler, cfg.warmup_steps, total)

    def _stop_ids(self) -> list[int]:
        ids = list(self.config.stop_token_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.insert(0, self.tokenizer.eos_token_id)
        return ids

    def _sampling_params(self, gen_kwargs: dict, length_sampler) -> SamplingParams:
        off_policy = sorted(set(gen_kwargs) & _GEN_OFF_POLICY)
        if off_policy:
            raise ValueError(f"generate: {off_policy} would sample from another distribution than the "
                             "softmax(logits / temperature) that PPO scores, so its old logprobs would be wrong; "
                             "sample with temperature / top_k / top_p only")
        unknown = set(gen_kwargs) - _GEN_ALIASES - _GEN_IGNORED
        if unknown:
            raise TypeError(f"generate: unsupported arguments {sorted(unknown)}; supported: "
                            f"{sorted(_GEN_ALIASES)}")
        if gen_kwargs.get("do_sample") is False:
            raise ValueError("generate: do_sample=False is not PPO; PPO needs samples from the policy")
        cfg = self.config
        temperature = float(gen_kwargs.get("temperature", cfg.temperature))
        if temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature}")
        max_new = length_sampler() if length_sampler is not None else gen_kwargs.get("max_new_tokens", cfg.max_new_tokens)
        return SamplingParams(
            max_new_tokens=int(max_new),
            temperature=temperature,
            top_k=int(gen_kwargs.get("top_k", cfg.top_k) or 0),
            top_p=float(gen_kwargs.get("top_p", cfg.top_p)),
            min_new_tokens=int(gen_kwargs.get("min_new_tokens", 0)),
            eos_token_ids=self._stop_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _sample(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollout:
        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        self.engine.update_weights(self.policy)
        return self.engine.generate(ids.to(self.device), mask.to(self.device), params)

    def _decode(self, rollout: Rollout) -> list[str]:
        rows = [r[m].tolist() for r, m in zip(rollout.response_ids, rollout.response_mask)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def _make_reward(self, reward_fn, reward_model, reward_tokenizer):
        if reward_fn is not None and reward_model is not None:
            raise ValueError("pass reward_fn or reward_model, not both")
        if reward_model is None or callable(reward_model) and not isinstance(reward_model, nn.Module):
            return reward_fn if reward_fn is not None else reward_model
        from ..rewards.model import RewardModelScorer

        if reward_tokenizer is None:
            raise ValueError("reward_model given as a model needs reward_tokenizer= (its own tokenizer)")
        return RewardModelScorer(reward_model, reward_tokenizer)

    def _check_same_vocab(self, other_tokenizer) -> None:
        if other_tokenizer is None or other_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError("critic_init='reward_model' needs a reward model with the policy's tokenizer; "
                             "use critic_init='policy' for a reward model with its own tokenizer")

    def _log_samples(self, path: Path, prompts, completions, scores) -> None:
        with path.open("a", encoding="utf-8") as handle:
            for p, c, s in zip(prompts[:4], completions[:4], scores[:4].tolist()):
                handle.write(json.dumps({"iteration": self.iteration, "prompt": p, "completion": c,
                                         "score": s}) + "\n")


def _flatten_groups(queries: Sequence[Any], responses: Sequence[Any]) -> tuple[list, list]:
    """``responses[i]`` given as a list of responses to ``queries[i]`` -> one row per response."""
    nested = [isinstance(r, (list, tuple)) and r and not isinstance(r[0], (int, dict)) for r in responses]
    if not any(nested):
        return list(queries), list(responses)
    if not all(nested):
        raise ValueError("step: give every prompt a list of responses, or none (mixed forms)")
    if len(queries) != len(responses):
        raise ValueError(f"step: {len(queries)} queries but {len(responses)} response lists")
    return ([q for q, group in zip(queries, responses) for _ in group],
            [r for group in responses for r in group])


def show_progress(progress: bool | None) -> bool:
    """Progress bars: as asked, else only on an interactive terminal outside CI."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


__all__ = ["PPOTrainer", "show_progress"]
