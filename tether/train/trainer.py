"""PPOTrainer: the public face of tether's PPO — the constructor that wires models together, and
the step API of TRL ≤ 0.11 (``generate`` → your reward → ``step``).

    PPOTrainer(config, model, tokenizer, ...)   builds reference, critic, optimiser -> PPOLearner (ppo.py)
    generate(prompts)        samples through the rollout engine; remembers ids and temperature per sample
    step(prompts, responses, scores)   -> Rollout -> PPOLearner.learn (one PPO iteration) -> stats, logged
    train(dataset, reward)   the dataset loop (loop.py), the same iteration per batch
    save_pretrained / save_checkpoint / load_checkpoint   persistence.py

The learner owns what the iteration updates (models, optimiser, KL controller, iteration count); this
class owns what the API needs between calls (tokenizer, reward, engine, sampled-ids cache, metric sinks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..algo import masked_sum
from ..config import PPOConfig
from ..data.prompts import left_pad
from ..models.critic import ValueModel
from ..models.forward import response_forward
from ..models.loading import prepare_tokenizer
from ..rewards.base import check_scores
from ..rollout import HFEngine, Rollout, SamplingParams
from ..tracking.sinks import check_report_to, make_sinks
from .allocator import keep_freed_memory
from .build import make_critic, make_reference, make_reward
from .distributed import Distributed
from .loop import show_progress, train_on_dataset
from .optim import make_optimizer
from .persistence import DataPosition, read_training_state, save_checkpoint, save_pretrained
from .ppo import PPOLearner
from .step_inputs import (SampledResponses, build_rollout, check_groups, flatten_groups, is_text,
                          prompt_token_lists, response_token_lists, sampling_params)

logger = logging.getLogger(__name__)

# generate() remembers sampled ids for step(); an evaluation loop that never calls step() must not grow it forever
_SAMPLE_CACHE_LIMIT = 4096


def _learner_attribute(name: str) -> property:
    """``trainer.<name>`` reads (and sets) ``trainer.ppo.<name>``: one owner, the learner."""
    return property(lambda self: getattr(self.ppo, name), lambda self, value: setattr(self.ppo, name, value),
                    doc=f"The PPO learner's ``{name}``.")


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
        policy = model.eval()  # eval mode throughout: dropout off in every forward [H24]
        self.device = next(model.parameters()).device
        if config.reuse_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        ref_model = make_reference(model, ref_model)
        self.reward_fn = make_reward(reward_fn, reward_model, reward_tokenizer)
        critic, value_head = make_critic(config, model, critic, self.reward_fn, reward_model, reward_tokenizer,
                                         tokenizer, self.device)
        critic_module = critic if critic is not None else value_head
        optimizer = make_optimizer(policy.parameters(), critic_module.parameters() if critic_module else [],
                                   config.learning_rate, config.critic_learning_rate, config.weight_decay,
                                   config.adam_eps)
        self.dist = Distributed.from_environment()
        self.ppo = PPOLearner(config, policy, ref_model, critic, value_head, optimizer, self.dist)
        self.engine = engine if engine is not None else HFEngine(policy)
        self.dataset = dataset
        if self.dist.enabled:
            torch.manual_seed(config.seed + self.dist.rank)  # each rank samples its own responses
        self.report_to = check_report_to(report_to)
        self.sink = self._make_sink(log_dir) if log_dir else None
        self._sampled = SampledResponses()  # what generate() sampled, and at which temperature, for step()
        self._prompt_ids: dict = {}  # repr(prompt) -> prompt ids, so step() does not re-tokenise
        self._generate_seconds = 0.0
        self.last_stats: dict[str, float] = {}  # of the latest iteration (shown in model cards)
        self.boundary: tuple[dict, DataPosition] | None = None  # RNG + data position a checkpoint stands for

    # the learner's state under the names TRL-era code and tests use; the learner owns it
    policy = _learner_attribute("policy")
    ref_model = _learner_attribute("ref_model")
    critic = _learner_attribute("critic")
    value_head = _learner_attribute("value_head")
    optimizer = _learner_attribute("optimizer")
    scheduler = _learner_attribute("scheduler")
    kl_ctl = _learner_attribute("kl_ctl")
    faults = _learner_attribute("faults")
    iteration = _learner_attribute("iteration")

    def make_experience(self, rollout: Rollout, scores: torch.Tensor):
        """``PPOLearner.make_experience``: score a rollout once; returns ``(experience, stats)``."""
        return self.ppo.make_experience(rollout, scores)

    def accumulate_gradients(self, experience, rows: torch.Tensor) -> dict[str, float]:
        """``PPOLearner.accumulate_gradients``: backward the loss of the minibatch ``rows``."""
        return self.ppo.accumulate_gradients(experience, rows)

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
        queries, responses = flatten_groups(queries, responses)
        check_groups(queries, self.config.num_generations)
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
        stats = self.record(self.ppo.learn(rollout, scores_t.to(self.device)),
                            generate_seconds=self._generate_seconds)
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
        return train_on_dataset(self, dataset, reward_fn, epochs, max_iterations, output_dir, save_every,
                                keep_checkpoints, resume, progress, prompt_field, prompt_formatter)

    def record(self, stats: dict[str, float], generate_seconds: float = 0.0,
               reward_seconds: float = 0.0) -> dict[str, float]:
        """Add the iteration's generation and reward times to its stats and log them (``metrics.jsonl``
        and the ``report_to`` sinks); the stats are kept for model cards."""
        stats["time/generate"] = generate_seconds
        stats["time/reward"] = reward_seconds
        self.last_stats = stats
        if self.sink is not None:
            self.sink.log(self.iteration, stats)
        return stats

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
            with self.ppo.reference() as ref:
                ref_logprobs = response_forward(ref, ids, attn, mask.shape[1], temperature).logprobs
            kls += masked_sum(logprobs - ref_logprobs, mask, dim=1).tolist()
        return kls

    def save_pretrained(self, directory: str | Path, _extra: Callable[[Path], None] | None = None) -> Path:
        """Write an HF-format checkpoint atomically: policy (or its peft adapters) and tokenizer at
        the top, the critic under ``critic/`` (or ``value_head.safetensors``), trainer state JSON.
        Refuses (``NumericalError``) to write weights holding NaN/inf. Under data parallelism every
        process calls it; the first writes, the others wait."""
        return save_pretrained(self, directory, _extra)

    def save_checkpoint(self, directory: str | Path) -> Path:
        """A resumable checkpoint: ``save_pretrained``'s files plus optimiser, scheduler, KL
        controller, RNG states, fault counters and (inside ``train()``) the data position, all as of
        the last iteration boundary. ``load_checkpoint`` (or ``train(resume=...)``) reads it back."""
        return save_checkpoint(self, directory)

    def load_checkpoint(self, directory: str | Path) -> DataPosition | None:
        """Load a ``save_checkpoint`` directory into this trainer (built from the same config and base
        model, so the reference model is the original one). Returns the saved data position."""
        return read_training_state(self.ppo, directory)

    # ------------------------------------------------------------------ helpers

    def _make_sink(self, run_dir: str | Path):
        """metrics.jsonl + the report_to sinks, on the main process only."""
        if not self.dist.is_main:
            return None
        return make_sinks(run_dir, self.report_to, dataclasses.asdict(self.config))

    def _stop_ids(self) -> list[int]:
        ids = list(self.config.stop_token_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.insert(0, self.tokenizer.eos_token_id)
        return ids

    def _sampling_params(self, gen_kwargs: dict, length_sampler) -> SamplingParams:
        return sampling_params(gen_kwargs, length_sampler, self.config, self._stop_ids(), self.tokenizer.pad_token_id)

    def _sample(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollout:
        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        self.engine.update_weights(self.policy)
        return self.engine.generate(ids.to(self.device), mask.to(self.device), params)

    def _decode(self, rollout: Rollout) -> list[str]:
        rows = [r[m].tolist() for r, m in zip(rollout.response_ids, rollout.response_mask)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)




__all__ = ["PPOTrainer", "show_progress"]
