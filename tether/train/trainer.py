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
import functools
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import PPOConfig
from ..data.prompts import left_pad
from ..models.critic import ValueModel, unwrap_peft
from ..models.loading import prepare_tokenizer
from ..rollout import HFEngine, Rollout, SamplingParams
from ..compat import trl_methods
from ..compat.config import apply_trl_defaults
from ..algo import RunningMoments
from ..compat.trl_trainer import (Accelerator, ProgramSchedule, is_tokenizer, log_stats, make_dataloader,
                                  positional_arguments, reference_wrapper, trl_precision, trl_tracker, unwrap_models)
from ..models.offload import ParkedWeights
from ..models.lm_head import plain_tied_lookup, sparse_tied_embedding_gradient, tied_embedding_gradient_in_place
from ..tracking.memory import release_free_heap
from ..tracking.metrics import memory_stats
from ..tracking.sinks import check_report_to, make_sinks
from .allocator import keep_freed_memory
from .build import make_critic, make_reference, make_reward
from .distributed import Distributed
from .loop import show_progress, train_on_dataset
from .optim import make_optimizer
from .persistence import DataPosition, read_training_state, save_checkpoint, save_pretrained
from .ppo import PPOLearner, returns_freed_memory
from .precision import Precision, enable_checkpointing
from . import step_api
from .step_inputs import SampledResponses, sampling_params

logger = logging.getLogger(__name__)

def _learner_attribute(name: str) -> property:
    """``trainer.<name>`` reads (and sets) ``trainer.ppo.<name>``: one owner, the learner."""
    return property(lambda self: getattr(self.ppo, name), lambda self, value: setattr(self.ppo, name, value),
                    doc=f"The PPO learner's ``{name}``.")


class PPOTrainer:
    """PPO for RLHF on any Hugging Face causal LM.

    ``PPOTrainer(config, model, tokenizer)`` is the step API of the TRL ≤ 0.11 trainer:
    ``generate(prompts)`` then ``step(prompts, responses, rewards)``. TRL 0.11's constructor works
    as it was called there: ``PPOTrainer(config, model, ref_model, tokenizer, dataset, optimizer,
    data_collator, num_shared_layers, lr_scheduler)`` (``ref_model`` may be None), positionally or by
    keyword. A TRL value-head model (``tether.AutoModelForCausalLMWithValueHead``) trains its
    ``pretrained_model`` with its ``v_head``, under TRL 0.11's defaults for every option the config
    did not set and TRL's ``step`` semantics (see "Coming from TRL" in the docs).

    Args:
        config: every option of the run (default ``PPOConfig()``).
        model: the policy: a Hugging Face causal LM, a peft model (LoRA), or a TRL value-head model.
        tokenizer: the policy's tokenizer (given a pad token if it has none).
        ref_model: frozen reference; default a frozen copy of ``model`` (``num_shared_layers``: its
            first layers shared), or — when ``model`` is a peft model — the same weights with
            adapters disabled (no second copy).
        critic: a ``ValueModel``; default built per ``config.value_model`` / ``config.critic_init``.
        reward_fn: ``fn(prompts, completions) -> scores`` used by ``train()``; or
        reward_model: a sequence-classification model (``RewardModelScorer`` or raw model + its
            tokenizer via ``reward_tokenizer``).
        dataset: prompts for ``train()`` (JSONL path, ``datasets.Dataset`` or list); also what
            ``trainer.dataloader`` iterates over (``config.batch_size`` rows, ``data_collator``).
        optimizer: use this instead of tether's fused AdamW.
        lr_scheduler: use this instead of tether's schedule (stepped once per ``step``, as TRL did).
        engine: the rollout engine: ``"hf"`` (default: transformers' ``generate`` on the policy itself),
            ``"vllm"`` (an in-process ``VLLMEngine`` in the trainer's precision, weights pushed every
            iteration), a ``RolloutConfig``, or any object with ``generate`` and ``update_weights``.
        log_dir: when set, metrics go to ``log_dir/metrics.jsonl`` (``train(output_dir=...)`` sets it too).
        report_to: extra metric sinks: any of ``tensorboard``, ``wandb``, ``mlflow``.
    """

    def __init__(self, config: PPOConfig | None = None, model=None, tokenizer=None, *positional, ref_model=None,
                 critic: ValueModel | None = None, reward_fn: Callable | None = None, reward_model=None,
                 reward_tokenizer=None, dataset=None, engine=None, log_dir: str | Path | None = None,
                 report_to: Sequence[str] = (), optimizer=None, data_collator=None, num_shared_layers=None,
                 lr_scheduler=None, training_data_collator=None):
        given = dict(ref_model=ref_model, dataset=dataset, optimizer=optimizer, data_collator=data_collator,
                     num_shared_layers=num_shared_layers, lr_scheduler=lr_scheduler, tokenizer=None)
        for name, value in positional_arguments(tokenizer, positional).items():
            if given.get(name) is not None:
                raise TypeError(f"PPOTrainer got {name} twice (positionally and by keyword)")
            given[name] = value
        tokenizer = given["tokenizer"] if given["tokenizer"] is not None else (tokenizer if is_tokenizer(tokenizer) else None)
        if tokenizer is None:
            raise TypeError("PPOTrainer needs a tokenizer: PPOTrainer(config, model, tokenizer) or TRL's "
                            "PPOTrainer(config, model, ref_model, tokenizer)")
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a tether.PPOConfig, got {type(config).__name__}")
        if model is None:
            raise TypeError("PPOTrainer needs a model")
        self.config = config
        torch.manual_seed(config.seed)
        self.tokenizer = tokenizer
        models = unwrap_models(model, given["ref_model"], given["num_shared_layers"])
        self.trl_mode = models.wrapper is not None  # a TRL value-head program: TRL's defaults and step semantics
        side = tokenizer.padding_side
        prepare_tokenizer(tokenizer)
        if self.trl_mode:  # TRL left the program's tokenizer padding as it was (its own tokenizer(...) calls rely on it)
            tokenizer.padding_side = side
        if self.trl_mode:
            changed = apply_trl_defaults(config)
            if changed:
                logger.info("TRL value-head model: TRL 0.11 defaults for the options not set: %s", ", ".join(changed))
        policy = models.policy.eval()  # eval mode throughout: dropout off in every forward [H24]
        self.device = next(policy.parameters()).device
        if config.reuse_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.precision = trl_precision(config, models.policy, self.device) if self.trl_mode else \
            Precision.resolve(config.precision, self.device)
        logger.info(self.precision.describe())
        if self.precision.mixed and any(p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)
                                        for p in policy.parameters()):
            logger.warning("precision bf16-mixed: the trainable weights of the model you passed are 16-bit; they are "
                           "cast to float32 in place (master weights, so small updates are not lost; TRL trained them "
                           "in 16 bits). Frozen weights stay in bf16.")
        policy = self.precision.prepare(policy)
        if models.ref_model is not None and self.precision.mixed and any(
                p.is_floating_point() and p.dtype != torch.bfloat16 for p in models.ref_model.parameters()):
            logger.warning("precision bf16-mixed: the ref_model you passed is stored in bf16 in place (the object is "
                           "changed); precision='fp32' leaves it as loaded")
        ref = self.precision.prepare(make_reference(policy, models.ref_model, self.precision.frozen_dtype))
        self.reward_fn = make_reward(reward_fn, reward_model, reward_tokenizer)
        if models.value_head is not None and config.value_model == "head" and config.needs_critic:
            critic, value_head = None, models.value_head
        else:
            critic, value_head = make_critic(config, policy, critic, self.reward_fn, reward_model, reward_tokenizer,
                                             tokenizer, self.device)
        critic, value_head = self.precision.prepare(critic), self.precision.prepare(value_head)
        if self.precision.mixed and isinstance(getattr(self.reward_fn, "model", None), nn.Module):
            self.reward_fn.model.to(torch.bfloat16)  # frozen: stored in bf16
        if config.gradient_checkpointing or config.trl.get("gradient_checkpointing"):
            enable_checkpointing(policy, critic)
        self.dist = Distributed.from_environment(config.sharding)
        if self.dist.sharded:  # before the optimiser: sharding replaces the parameters it must hold
            if given["optimizer"] is not None:
                raise ValueError("sharding='fsdp2' replaces the model's parameters with shards: an optimizer built "
                                 "before PPOTrainer holds the old ones. Let PPOTrainer build it (optimizer=None), "
                                 "or use sharding='ddp'")
            policy, ref, critic, value_head = self.dist.shard_models(policy, ref, critic, value_head,
                                                                     mixed_precision=self.precision.mixed)
            if isinstance(getattr(self.reward_fn, "model", None), nn.Module):  # a reward model: frozen, sharded
                self.dist.shard_models(self.reward_fn.model.requires_grad_(False))  # gathered per call (dist.scoring)
        if config.offload_reference:
            if ref is None:
                logger.info("offload_reference: the reference is the policy with its LoRA adapters off; "
                            "nothing to offload")
            else:
                parked = ParkedWeights(ref)  # parked again after each use (PPOLearner.make_experience)
                parked.park()
        if self.dist.enabled:  # DDP and FSDP2 reduce the tied weight's gradient through autograd: its own sum
            plain_tied_lookup(policy)
        else:  # a tied embedding: one [V, H] gradient buffer per backward pass, not two or three
            if config.optimizer_in_backward:  # autograd sums both parts before the weight's step hook fires
                tied = sparse_tied_embedding_gradient(policy)
            else:
                tied = tied_embedding_gradient_in_place(policy)
            if tied:
                logger.debug("tied embedding: its lookup's gradient rows are added into the LM head's gradient")
        critic_module = critic if critic is not None else value_head
        if given["optimizer"] is None:
            given["optimizer"] = make_optimizer(policy.parameters(), critic_module.parameters() if critic_module else [],
                                                config.learning_rate, config.critic_learning_rate,
                                                config.weight_decay, config.adam_eps)
        if self.trl_mode:  # TRL's trainer held accelerate's wrappers: .optimizer.optimizer, .lr_scheduler.scheduler
            given["optimizer"] = trl_methods.AcceleratedOptimizer(given["optimizer"])
            if given["lr_scheduler"] is not None:
                given["lr_scheduler"] = trl_methods.AcceleratedScheduler(given["lr_scheduler"])
        self.ppo = PPOLearner(config, policy, ref, critic, value_head, given["optimizer"], self.dist, self.precision)
        if config.offload_reference and ref is not None:
            self.ppo.parked_reference = parked
        self.lr_scheduler = given["lr_scheduler"]
        if self.lr_scheduler is not None:  # the program's schedule, stepped once per step(); none of ours
            self.ppo.scheduler = ProgramSchedule()
        self.model = models.wrapper if models.wrapper is not None else policy  # what TRL programs call .model
        # TRL's ppo_trainer.ref_model: the value-head wrapper it was given or made (None with peft)
        self._ref_wrapper = reference_wrapper(models, ref) if self.trl_mode else None
        self.running = RunningMoments()  # of the scores, for TRL's use_score_scaling
        self.engine = make_engine(engine, policy, self.precision)
        self._engine_synced_at: int | None = None  # the iteration whose weights the engine holds
        self._sync_seconds = 0.0  # weight updates of the engine since the last record()
        self.dataset = given["dataset"]
        if self.trl_mode and self.dataset is None:
            warnings.warn("No dataset is provided. Make sure to set config.batch_size to the correct value before "
                          "training.", UserWarning, stacklevel=2)
        self.data_collator = given["data_collator"]
        self.training_data_collator = training_data_collator  # accepted; tether pads inputs itself
        if self.dist.enabled:
            torch.manual_seed(config.seed + self.dist.rank)  # each rank samples its own responses
        self.report_to = check_report_to(report_to)
        self.sink = self._make_sink(log_dir) if log_dir else trl_tracker(self)
        self._sampled = SampledResponses()  # what generate() sampled, and at which temperature, for step()
        self._prompt_ids: dict = {}  # repr(prompt) -> prompt ids, so step() does not re-tokenise
        self._generate_seconds = 0.0
        self._warned: set[str] = set()  # departures from TRL already explained once
        self.current_step = 0
        self.last_stats: dict[str, float] = {}  # of the latest iteration (shown in model cards)
        self.boundary: tuple[dict, DataPosition] | None = None  # RNG + data position a checkpoint stands for

    # the learner's state under the names TRL-era code and tests use; the learner owns it
    policy = _learner_attribute("policy")
    critic = _learner_attribute("critic")
    value_head = _learner_attribute("value_head")
    optimizer = _learner_attribute("optimizer")
    scheduler = _learner_attribute("scheduler")
    kl_ctl = _learner_attribute("kl_ctl")
    faults = _learner_attribute("faults")
    iteration = _learner_attribute("iteration")

    @property
    def ref_model(self):
        """The frozen reference: the learner's (a causal LM; None with LoRA), or for a TRL value-head
        program the value-head wrapper TRL's trainer held (given, or a frozen copy of the model)."""
        return self._ref_wrapper if self._ref_wrapper is not None else self.ppo.ref_model

    @ref_model.setter
    def ref_model(self, value) -> None:
        if self.ppo.parked_reference is not None:  # the old reference gets its weights back; the new one is kept
            self.ppo.parked_reference.close()
            self.ppo.parked_reference = None
        self._ref_wrapper = None
        self.ppo.ref_model = value

    def make_experience(self, rollout: Rollout, scores: torch.Tensor):
        """``PPOLearner.make_experience``: score a rollout once; returns ``(experience, stats)``."""
        return self.ppo.make_experience(rollout, scores)

    def accumulate_gradients(self, experience, rows: torch.Tensor) -> dict[str, float]:
        """``PPOLearner.accumulate_gradients``: backward the loss of the minibatch ``rows``."""
        return self.ppo.accumulate_gradients(experience, rows)

    # ------------------------------------------------------------------ public API

    def generate(self, query: Any, length_sampler: Callable[[], int] | None = None, batch_size: int | None = None,
                 return_prompt: bool = True, generate_ref_response: bool = False, remove_padding: bool = True,
                 **gen_kwargs):
        """Sample responses (TRL 0.11's signature and output forms).

        ``query``: a prompt string, a list of them (or of chat message lists) -> completion
        string(s); a 1-D token-id tensor -> ``[1, L]`` tensor; a list of 1-D tensors -> list of
        1-D tensors. Token outputs include the prompt unless ``return_prompt=False``; responses to a
        list are cut after their first EOS (``remove_padding``). ``gen_kwargs`` have transformers'
        meaning: ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``min_new_tokens``,
        ``min_length``, ``eos_token_id`` (-1: never stop early), ``pad_token_id``, ``do_sample``;
        penalties and beams are passed on for evaluation, but ``step`` will not train on such samples.
        ``length_sampler()`` draws ``max_new_tokens`` per batch of ``batch_size`` (default: 4 with a
        length sampler, as TRL; else all at once). ``generate_ref_response=True`` also samples the reference: returns ``(response, ref)``.
        ``step`` scores samples at the temperature they were drawn at.
        """
        return step_api.generate(self, query, length_sampler, batch_size, return_prompt, generate_ref_response, remove_padding,
                                 gen_kwargs)

    def step(self, queries: Sequence[Any], responses: Sequence[Any], scores: Sequence[Any],
             response_masks: Sequence[Any] | None = None) -> dict[str, Any]:
        """One PPO iteration on given prompts, responses and scores; returns the stats dict.

        queries: prompt strings / chat messages, or 1-D token-id tensors (TRL ≤ 0.11).
        responses: completion strings (ideally from ``generate``), or 1-D response token tensors.
        scores: one number or scalar tensor per response.
        response_masks: per response, 1 on the tokens to train on (TRL's: e.g. 0 on a tool's output).

        Responses are cut after their first EOS or stop token; with a TRL value-head model every
        given token is trained on, as TRL did. Stats carry tether's keys and TRL's (``ppo/...``).

        Group estimators (``num_generations = k > 1``): pass each prompt k times in a row with its k
        responses, or each prompt once with a list of k responses (``responses[i]`` a list); scores
        are then one per response, flattened in the same order.
        """
        return step_api.step(self, queries, responses, scores, response_masks)

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
               reward_seconds: float = 0.0, log: bool = True) -> dict[str, float]:
        """Add the iteration's generation and reward times to its stats and log them (``metrics.jsonl``
        and the ``report_to`` sinks; ``log=False``: not now, ``log_stats`` will); the stats are kept
        for model cards."""
        stats["time/generate"] = generate_seconds
        stats["time/reward"] = reward_seconds
        stats["time/weight_sync"], self._sync_seconds = self._sync_seconds, 0.0
        if returns_freed_memory(self.config, self.device):  # the iteration's end: a phase boundary
            stats["memory/returned_gib"] = release_free_heap() / 2**30
        stats.update(memory_stats(self.device))
        self.last_stats = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        if self.sink is not None and log:
            self.sink.log(self.iteration, self.last_stats)
        return stats

    def log_stats(self, stats: dict, batch: dict, rewards, columns_to_log: Sequence[str] = ("query", "response")) -> None:
        """TRL 0.11's ``log_stats``: ``stats`` plus ``env/reward_mean``, ``env/reward_std`` (of
        ``rewards``, over every process) to the metric sinks — the run's ``metrics.jsonl`` and the
        tracker of ``log_with`` / ``report_to`` — and the batch's ``columns_to_log`` with their
        rewards to ``samples.jsonl`` beside it. Without a log directory or tracker it logs nothing."""
        log_stats(self, stats, batch, rewards, columns_to_log)

    def log_metrics(self, values: dict, step: int | None = None) -> None:
        """The scalar entries of ``values`` to the metric sinks (main process; nothing without sinks)."""
        if self.sink is not None and self.dist.is_main:
            scalars = {k: float(v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
                       for k, v in values.items() if isinstance(v, (int, float)) or
                       (isinstance(v, torch.Tensor) and v.numel() == 1)}
            self.sink.log(self.iteration if step is None else step, scalars)

    @functools.cached_property
    def dataloader(self):
        """TRL's ``ppo_trainer.dataloader`` over the constructor's ``dataset``: shuffled batches of
        ``config.batch_size`` rows, the last partial one dropped, ``data_collator`` as ``collate_fn``;
        under torchrun each process gets its own shard. None without an indexable dataset."""
        return make_dataloader(self.dataset, self.config.batch_size, self.data_collator, self.dist,
                               self.config.remove_unused_columns, self.model, self.config.seed)

    @functools.cached_property
    def accelerator(self) -> Accelerator:
        """What TRL programs use of ``accelerate.Accelerator``: ``device``, ``is_main_process``,
        ``num_processes``, ``unwrap_model``, ``log``, ``gather``, ``wait_for_everyone``, ``print``, ..."""
        return Accelerator(self)

    @property
    def current_device(self) -> torch.device:
        return self.device

    @property
    def is_encoder_decoder(self) -> bool:
        """An encoder-decoder policy (T5, BART): responses are decoder sequences."""
        return bool(getattr(unwrap_peft(self.policy).config, "is_encoder_decoder", False))

    @property
    def is_peft_model(self) -> bool:
        return hasattr(self.policy, "peft_config")

    # TRL 0.11's trainer internals, with TRL's numerics (tether.compat.trl_methods); step() does not use them
    def _step_safety_checker(self, batch_size, queries, responses, scores, masks=None):
        return trl_methods.step_safety_checker(self, batch_size, queries, responses, scores, masks)

    def prepare_model_inputs(self, queries, responses):
        return trl_methods.prepare_model_inputs(self, queries, responses)

    def batched_forward_pass(self, model, queries, responses, model_inputs, return_logits=False, response_masks=None):
        return trl_methods.batched_forward_pass(self, model, queries, responses, model_inputs, return_logits,
                                                response_masks)

    def compute_rewards(self, scores, logprobs, ref_logprobs, masks):
        return trl_methods.compute_rewards(self, scores, logprobs, ref_logprobs, masks)

    def _kl_penalty(self, logprob, ref_logprob):
        return trl_methods.kl_penalty(self, logprob, ref_logprob)

    def compute_advantages(self, values, rewards, mask):
        return trl_methods.compute_advantages(self, values, rewards, mask)

    def loss(self, old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns):
        return trl_methods.loss(self, old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns)

    @property
    def is_distributed(self) -> bool:
        return self.dist.enabled

    def compute_reward_score(self, input_ids, attention_mask=None, **kwargs):
        """The reward adapter's scores ``[B, L, num_labels]`` (``model.compute_reward_score``; the model
        loaded with ``from_pretrained(..., reward_adapter=DIR)``)."""
        return self.model.compute_reward_score(input_ids, attention_mask, **kwargs)

    def sequence_kl(self, queries: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        """KL of the policy to the reference on given responses, one number (nats) per response:
        ``Σ_t log π(y_t|·) − log π_ref(y_t|·)`` over the valid response tokens, at the
        temperature they were sampled at (``config.temperature`` for responses not from ``generate``).
        For responses sampled from the policy (``generate``) its mean is an unbiased
        estimate of KL(π‖π_ref) per sequence, the same quantity as ``objective/kl``."""
        return step_api.sequence_kl(self, queries, responses)

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
        self._engine_synced_at = None  # new weights: the engine needs them
        return read_training_state(self.ppo, directory)

    def close(self) -> None:
        """Shut the rollout engine down (a vLLM engine holds memory and threads until then); the
        metric sinks are flushed and closed. The trainer can still save, not sample."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        if self.sink is not None and hasattr(self.sink, "close"):
            self.sink.close()
            self.sink = None

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
        if self.trl_mode and length_sampler is None and not {"max_new_tokens", "max_length"} & set(gen_kwargs):
            # transformers 4.46 (TRL 0.11's): the checkpoint's max_length (default 20), prompt included
            default = getattr(getattr(unwrap_peft(self.policy), "generation_config", None), "max_length", None) or 20
            gen_kwargs = {**gen_kwargs, "max_length": default}
            self._warn_once("max_length", f"generate: no max_new_tokens given, so the length is transformers' "
                            f"max_length={default} with the prompt included, as in TRL 0.11 (transformers 4.46). "
                            "Pass max_new_tokens to set the response length.")
        return sampling_params(gen_kwargs, length_sampler, self.config, self._stop_ids(), self.tokenizer.pad_token_id,
                               len(self.tokenizer))

    def _sample(self, prompt_ids: list[list[int]], params: SamplingParams, model=None) -> Rollout:
        """Sample through the engine (``model`` given: through an HF engine on that model)."""
        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        if model is not None:
            engine = HFEngine(model)
        else:
            engine = self.engine
            if self._engine_synced_at != self.iteration:  # once per iteration, not per generate() call
                t0, started = time.perf_counter(), getattr(engine, "start_seconds", 0.0)
                engine.update_weights(self.policy)
                start = getattr(engine, "start_seconds", 0.0) - started  # a first call starts the engine
                self._sync_seconds += time.perf_counter() - t0 - start
                self._engine_synced_at = self.iteration
        if not isinstance(engine, HFEngine):  # vLLM (or the program's own engine) samples from its own copy
            with self.precision.autocast():
                return engine.generate(ids.to(self.device), mask.to(self.device), params)
        with self.precision.autocast(), self.dist.rollout(engine.model, self.config.sharded_rollout == "gathered"):
            return engine.generate(ids.to(self.device), mask.to(self.device), params)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _decode(self, rollout: Rollout) -> list[str]:
        rows = [r[m].tolist() for r, m in zip(rollout.response_ids, rollout.response_mask)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)


def make_engine(engine, policy, precision: Precision):
    """The trainer's rollout engine from what ``PPOTrainer(engine=...)`` was given."""
    from ..config import ConfigError, RolloutConfig

    if engine is None or (isinstance(engine, str) and engine == "hf"):
        return HFEngine(policy)
    from ..models.forward import is_encoder_decoder

    if is_encoder_decoder(policy):
        raise ValueError(f"PPOTrainer(engine={engine!r}): an encoder-decoder policy samples with the HF engine "
                         "(engine='hf'); vLLM's rollout path is for causal LMs")
    if isinstance(engine, str):
        try:
            engine = RolloutConfig(engine=engine)
        except ConfigError as err:
            raise ValueError(f"PPOTrainer(engine={engine!r}): {err}") from None
    if isinstance(engine, RolloutConfig):
        return engine.make_engine(precision) or HFEngine(policy)
    if not (callable(getattr(engine, "generate", None)) and callable(getattr(engine, "update_weights", None))):
        raise TypeError(f"engine must be 'hf', 'vllm', a RolloutConfig or an object with generate() and "
                        f"update_weights(), got {type(engine).__name__}")
    return engine


__all__ = ["PPOTrainer", "make_engine", "show_progress"]
