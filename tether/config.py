"""Configuration: plain dataclasses whose field docstrings are the documentation.

``PPOConfig`` holds every PPO knob and is what the step API takes
(``PPOConfig(model_name=..., learning_rate=1e-5, batch_size=16, ppo_epochs=4)``).
``RunConfig`` is what ``tether ppo --config FILE.yaml`` reads: model, data, reward, and ``train``
(a ``PPOConfig``). YAML keys map one-to-one onto fields; ``a.b=value`` overrides any of them.
"""

from __future__ import annotations


import dataclasses
import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models.loading import DTYPES, LoraSettings


ALGORITHMS = ("ppo", "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_ALGORITHMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp_baseline")
"""Estimators that compare the responses to one prompt (num_generations >= 2)."""
PER_SEQUENCE_ADVANTAGES = ("grpo", "dr_grpo", "dapo", "rloo")
"""Estimators that give every token of a response the same advantage (what sequence-level GSPO needs)."""
POLICY_LOSSES = ("ppo", "gspo", "gspo_token", "cispo")
PROMPT_OVERFLOW = ("truncate_left", "drop", "error")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


@dataclass
class PPOConfig:
    """PPO for RLHF. Defaults follow the TL;DR recipe of [H24] where it applies to small models."""

    model_name: str | None = None
    """Informational: the policy's name or path (recorded in checkpoints and logs)."""
    seed: int = 0
    """Seed for sampling, shuffling and initialisation."""
    algorithm: str = "ppo"
    """Advantage estimator: ppo (critic + GAE) | grpo (group mean/std) | dr_grpo (Dr. GRPO: group mean
    only, loss normalised by a constant length) | dapo (DAPO: grpo's advantage with clip-higher,
    token-level loss and dynamic sampling) | rloo (leave-one-out mean) | reinforce_pp (REINFORCE++:
    KL-shaped returns, batch whitening) | reinforce_pp_baseline (REINFORCE++-baseline: group mean
    subtracted first). Only ppo loads a critic. docs/algorithms.md has each one's formula."""
    num_generations: int = 1
    """Responses sampled per prompt; rows of a batch come in groups of this size (group estimators:
    grpo, dr_grpo, dapo, rloo, reinforce_pp_baseline need >= 2)."""
    grpo_scale_rewards: bool = True
    """grpo: divide by the group's reward std; false = mean-centred only (dr_grpo never scales)."""

    # --- batch geometry ---
    batch_size: int = 16
    """Responses (rollout rows) per iteration: batch_size / num_generations prompts."""
    mini_batch_size: int | None = None
    """Sequences per forward/backward (a memory knob). None: 4, or batch_size when that is smaller."""
    gradient_accumulation_steps: int | None = None
    """Forward/backward passes per optimiser step; a step sees mini_batch_size × this many sequences.
    None: the whole batch (one optimiser step per PPO epoch, the default of TRL and [H24])."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, reshuffled into minibatches every pass."""

    # --- optimiser ---
    learning_rate: float = 1e-5
    """Adam learning rate of the policy."""
    critic_learning_rate: float | None = None
    """Learning rate of the critic / value head; None uses learning_rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in [H24], not PyTorch's 1e-8)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (policy and critic together) to this; None disables clipping."""
    lr_scheduler: str = "constant"
    """constant | linear (decay to 0 over total_steps) | cosine."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    total_steps: int | None = None
    """PPO iterations the schedule spans; train() fills it in from the dataset when None."""

    # --- generation ---
    max_new_tokens: int = 64
    """Longest response in tokens."""
    temperature: float = 0.7
    """Sampling temperature; training logprobs use the same one [H24]."""
    top_k: int = 0
    """Top-k filter while sampling; 0 = off (pure sampling, as PPO assumes)."""
    top_p: float = 1.0
    """Nucleus filter while sampling; 1.0 = off."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end a response like EOS does (the response is cut after the first)."""
    use_chat_template: bool = True
    """Render string prompts with the tokenizer's chat template (as one user turn) when it has one."""
    max_prompt_length: int = 512
    """Longest prompt in tokens; see prompt_overflow for longer ones."""
    prompt_overflow: str = "truncate_left"
    """Prompts over max_prompt_length: truncate_left (keep the last tokens) | drop (train() skips them) |
    error. truncate_left and drop warn with a count."""

    # --- a separate rollout engine (vLLM) ---
    max_engine_logprob_diff: float = 0.01
    """fp32: stop with an error when the engine's log-probabilities of its samples differ from the
    trainer's old logprobs by more than this on average (nats per token): the engine is not sampling
    from the policy's weights (fp32 kernel noise is ~1e-5; one missed weight update is ~1e-2 or more).
    Logged as rollout/logprob_diff_mean and _max under every precision."""
    tis_cap: float | None = None
    """Truncated importance sampling (Yao et al. 2025): weight each token's policy loss by
    min(π_old / π_engine, tis_cap), correcting for the engine's different numerics (bf16). null: off;
    2 is common. Only with an engine that reports its logprobs (vLLM)."""

    # --- reward shaping ---
    missing_eos_score: float | None = None
    """Score given instead of the reward to responses that hit max_new_tokens without EOS (TL;DR: -1)."""
    overlong_buffer: int | None = None
    """DAPO's soft overlong punishment: the last this many tokens before max_new_tokens add a penalty
    to the score, from 0 at max_new_tokens - overlong_buffer to -overlong_penalty at max_new_tokens
    (DAPO: 4096 of 20480). null: off."""
    overlong_penalty: float = 1.0
    """The largest soft overlong punishment (at max_new_tokens), in score units."""
    overlong_filter: bool = False
    """Leave responses that hit max_new_tokens without EOS out of the loss (DAPO's overlong filtering,
    TRL's mask_truncated_completions): their truncation is not a fault of their tokens."""
    dynamic_sampling: bool | None = None
    """Keep only groups whose scores are not all equal (they carry no gradient) and draw more prompts
    until the batch is full of them (DAPO's dynamic sampling; train() only: step() leaves such groups out
    of the loss). Needs num_generations >= 2. null: on for dapo, off otherwise."""
    max_sampling_rounds: int = 8
    """Dynamic sampling: batches of prompts drawn at most per iteration; if the batch is still not full,
    the iteration trains on the informative groups it has (the rest left out of the loss) and warns."""
    whiten_scores: bool = False
    """Whiten the scores over the batch before they enter the per-token reward. Turn it on for rewards
    far from zero such as the seed's len(r) (the first batch warns when the scores look like that)."""
    score_clip: float | None = None
    """Clip scores (after whitening) to [-score_clip, score_clip]."""
    whiten_rewards: bool = False
    """ppo: scale the per-token rewards (KL penalty + score) by their std over the batch's valid tokens,
    mean kept, before GAE (TRL's whiten_rewards)."""

    # --- KL to the reference ---
    kl_coef: float = 0.05
    """β of the KL penalty (initial value when adaptive): per token in the reward r_t = -β·kl_t for
    ppo and reinforce_pp, per sequence in the score for rloo, as a loss term β·KL (estimator
    kl_loss_estimator) for grpo."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: k1 | k2 | k3 | abs (TRL's kl_penalty "abs": |log π − log π_ref|)."""
    adaptive_kl: bool = False
    """Adapt β toward kl_target with the controller of [Z19]."""
    kl_target: float = 6.0
    """Target per-sequence KL (nats) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (in sequences) of the adaptive controller."""
    kl_loss_coef: float = 0.0
    """Weight of a KL-to-reference term added to the loss (0 = off)."""
    kl_loss_estimator: str = "k3"
    """Estimator of the KL loss terms (kl_loss_coef, and the β·KL of grpo, dr_grpo and dapo): k1 | k2 |
    k3 | abs, or k1+ | k3+ | abs+ (the value of k1/k3/abs with the gradient of k2, a straight-through
    estimator whose gradient is that of KL(π‖π_ref); k3's own gradient is that of KL(π_ref‖π))."""

    # --- advantages ---
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """λ of GAE."""
    whiten_advantages: bool = True
    """Whiten advantages over the valid tokens of the batch (ppo; rloo: scale only, no shift).
    reinforce_pp always whitens; grpo never (its group std does that job)."""
    advantage_shift_mean: bool = True
    """When whitening advantages, also subtract their mean."""

    # --- losses ---
    policy_loss: str = "ppo"
    """ppo (clipped token ratios) | gspo (sequence-level ratio, clipped per response) | gspo_token (the
    sequence ratio with per-token advantages) | cispo (REINFORCE weighted by a clipped, detached token
    ratio: no token loses its gradient). docs/algorithms.md has each one's formula."""
    cliprange: float = 0.2
    """ε of the clipped policy objective (ε_low when cliprange_high is set)."""
    cliprange_high: float | None = None
    """ε_high, the upper clip of the token ratio, 1 + ε_high ("clip-higher"); cispo: its weight's cap.
    null: cliprange (dapo: 0.28)."""
    sequence_cliprange: list[float] = field(default_factory=lambda: [3e-4, 4e-4])
    """gspo, gspo_token: [ε_low, ε_high] of the sequence ratio (the GSPO paper's 3e-4, 4e-4)."""
    dual_clip: float | None = None
    """c > 1 caps the loss of negative-advantage tokens at -c·A (dual clip, policy_loss ppo); None = off."""
    cliprange_value: float | None = 0.2
    """ε_v of the clipped value loss; None = unclipped."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    loss_aggregation: str | None = None
    """token-mean (Σ over tokens / the minibatch's token count) | seq-mean-token-mean (each response
    weighs the same) | seq-mean-token-sum-norm (Σ over tokens / (responses × max_new_tokens), Dr. GRPO).
    null: seq-mean-token-sum-norm for dr_grpo, seq-mean-token-mean for gspo/gspo_token, else token-mean."""

    # --- critic ---
    value_model: str = "head"
    """head: a value head on the policy's hidden states; separate: a critic network of its own (the
    TL;DR recipe; twice the time and ~1.7x the memory per iteration on a 135M model, measured)."""
    critic_init: str = "policy"
    """Weights of a separate critic (value_model: separate): policy | reward_model (needs the policy's
    tokenizer)."""

    # --- faults ---
    max_bad_steps: int = 3
    """A non-finite loss, gradient norm or reward skips the step (optimiser step, or the iteration for a
    reward) with a warning; more than this many in a row stop the run with an error (0: the first)."""

    # --- performance ---
    precision: str = "auto"
    """fp32 | bf16-mixed | auto. bf16-mixed: forwards and backwards under bf16 autocast, trainable weights,
    gradients and AdamW state in fp32, frozen weights (reference, reward model, a LoRA base) in bf16,
    logits upcast before the temperature. auto: bf16-mixed on CUDA GPUs with bf16 and on CPUs with
    AVX512-BF16 or AMX, fp32 elsewhere (bf16 is ~25× slower on AVX2-only CPUs); the choice is logged."""
    sharding: str = "ddp"
    """Under torchrun with N processes: ddp (every process holds the whole policy, critic, reference and
    optimiser state) | fsdp2 (each holds 1/N of every parameter, gradient and AdamW state, and of the
    reference; a decoder layer is gathered only while it runs: for models whose training state does not
    fit N times). One process: ignored. docs/scaling.md."""
    sharded_rollout: str = "gathered"
    """sharding fsdp2, sampling: gathered (each process gathers the full policy once per rollout and frees it
    after: one all-gather, a full copy of the weights while sampling) | per_layer (each decoder layer is
    gathered at every generated token: no full copy, the whole model's weights communicated per token)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them (policy and critic):
    less memory, ~30 % more compute; the same gradients."""
    optimizer_in_backward: bool = False
    """Gradient release: step the optimiser for each parameter inside the backward pass as soon as its gradient
    is complete, then free it — no full set of gradients at the peak (4 bytes per trained parameter in fp32).
    The same update as stepping after backward; needs max_grad_norm: null, gradient_accumulation_steps: 1
    and one process (clipping, accumulation and DDP/FSDP2 need every gradient before any step)."""
    offload_reference: bool = False
    """Keep the frozen reference's weights in a file between its uses (one forward per iteration, in the
    experience phase) instead of in memory: the update phase, where memory peaks, runs without them (2 bytes
    per parameter in bf16). Written once; mapped back from the OS's file cache for each use (from disk if
    the OS dropped it). No effect with LoRA (the reference is the policy with its adapters off); not with
    sharding: fsdp2 (the reference is sharded already). Directory: $TETHER_OFFLOAD_DIR or tether's cache."""
    fused_logprobs: bool = True
    """Compute response-token log-probs (and entropies) from the LM head a chunk of tokens at a time, never
    holding [batch, tokens, vocabulary] logits (the chunk's logits are recomputed in the backward pass: one
    more LM-head matmul). The same numbers as from full logits; false = full logits (models whose forward
    rescales logits use them anyway)."""
    pad_to_multiple_of: int | None = None
    """Width (prompt + response columns) of every micro-batch of the scoring and training passes, after its
    all-padding columns are dropped, rounded up to a multiple of this with masked padding columns: a run then
    meets a few shapes instead of a new one per micro-batch, so kernels and their caches (oneDNN keeps a
    primitive and its memory per shape) are reused and the heap is not fragmented by buffers of ever-changing
    size. Exact (padding is masked; causal attention never sees trailing columns); 1 = the trimmed width.
    null: 32 under bf16-mixed on a CPU (a long run's memory stays flat, steps are no slower), 1 elsewhere."""
    reuse_freed_memory: bool = True
    """CPU training on Linux/glibc: keep freed memory in the process (malloc without mmap), so the
    large buffers every minibatch frees and reallocates are not page-faulted in again (~25 % faster
    steps on 2 cores); memory is returned to the OS at exit instead. Process-wide; false = leave malloc alone."""
    return_freed_memory: bool = True
    """CPU on Linux/glibc: at the end of every iteration, when more than 256 MiB are free inside malloc's heap,
    hand those pages back to the OS (malloc_trim), so resident memory follows what the run uses instead of
    the high-water mark of every buffer shape it met (memory/returned_gib logs how much)."""

    def __post_init__(self):
        self.validate()

    # derived sizes, computed once
    @property
    def needs_critic(self) -> bool:
        """Only PPO's estimator (GAE) uses a value function."""
        return self.algorithm == "ppo"

    @property
    def effective_loss_aggregation(self) -> str:
        """``loss_aggregation``, or the algorithm's own when it is None."""
        if self.loss_aggregation is not None:
            return self.loss_aggregation
        if self.algorithm == "dr_grpo":
            return "seq-mean-token-sum-norm"
        if self.policy_loss in ("gspo", "gspo_token"):
            return "seq-mean-token-mean"
        return "token-mean"

    @property
    def effective_cliprange_high(self) -> float:
        """ε_high: ``cliprange_high``, else 0.28 for dapo, else ``cliprange``."""
        if self.cliprange_high is not None:
            return self.cliprange_high
        return 0.28 if self.algorithm == "dapo" else self.cliprange

    @property
    def filters_groups(self) -> bool:
        """Dynamic sampling on: ``dynamic_sampling``, or dapo's default."""
        return self.algorithm == "dapo" if self.dynamic_sampling is None else self.dynamic_sampling

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward."""
        return self.mini_batch_size if self.mini_batch_size is not None else min(4, self.batch_size)

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per optimiser step."""
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        return max(1, self.batch_size // self.micro_batch_size)

    @property
    def backward_batch_size(self) -> int:
        """Sequences per optimiser step."""
        return self.micro_batch_size * self.accumulation_steps

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        from .algo import KL_ESTIMATORS, KL_LOSS_ESTIMATORS, LOSS_AGGREGATIONS

        positive = ["batch_size", "ppo_epochs", "max_new_tokens", "max_prompt_length", "kl_horizon"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("mini_batch_size", "gradient_accumulation_steps", "pad_to_multiple_of"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.batch_size % self.backward_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be divisible by mini_batch_size × "
                f"gradient_accumulation_steps ({self.micro_batch_size} × {self.accumulation_steps})"
            )
        if self.optimizer_in_backward and (self.max_grad_norm is not None or self.accumulation_steps != 1):
            raise ConfigError(
                "optimizer_in_backward steps each parameter during backward, so it cannot clip the global gradient "
                "norm or accumulate several backward passes: set max_grad_norm: null and "
                f"gradient_accumulation_steps: 1 (now {self.max_grad_norm} and {self.accumulation_steps})")
        if self.offload_reference and self.sharding == "fsdp2":
            raise ConfigError("offload_reference: the reference is sharded across the processes under sharding: "
                              "fsdp2 already; set offload_reference: false (or sharding: ddp)")
        if self.learning_rate < 0:
            raise ConfigError(f"learning_rate must be ≥ 0, got {self.learning_rate}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (PPO samples), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        choices = {
            "kl_estimator": KL_ESTIMATORS,
            "kl_loss_estimator": KL_LOSS_ESTIMATORS,
            "loss_aggregation": (None,) + LOSS_AGGREGATIONS,
            "policy_loss": POLICY_LOSSES,
            "lr_scheduler": ("constant", "linear", "cosine"),
            "value_model": ("separate", "head"),
            "critic_init": ("policy", "reward_model"),
            "algorithm": ALGORITHMS,
            "prompt_overflow": PROMPT_OVERFLOW,
            "precision": ("auto", "fp32", "bf16-mixed"),
            "sharding": ("ddp", "fsdp2"),
            "sharded_rollout": ("gathered", "per_layer"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.num_generations < 1 or self.batch_size % self.num_generations:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                              f"({self.num_generations}): rows come in groups of responses to one prompt")
        if self.algorithm in GROUP_ALGORITHMS and self.num_generations < 2:
            raise ConfigError(f"algorithm={self.algorithm} compares responses to the same prompt: set "
                              f"num_generations >= 2 (got {self.num_generations})")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"dual_clip must be > 1 (or null), got {self.dual_clip}")
        if self.dual_clip is not None and self.policy_loss != "ppo":
            raise ConfigError(f"dual_clip caps the clipped token objective of policy_loss=ppo; policy_loss="
                              f"{self.policy_loss} has none to cap: set dual_clip to null")
        if self.cliprange <= 0:
            raise ConfigError(f"cliprange must be > 0, got {self.cliprange}")
        if self.cliprange_high is not None and self.cliprange_high <= 0:
            raise ConfigError(f"cliprange_high must be > 0 (or null), got {self.cliprange_high}")
        if (len(self.sequence_cliprange) != 2 or not 0 < self.sequence_cliprange[0] < 1
                or self.sequence_cliprange[1] <= 0):
            raise ConfigError(f"sequence_cliprange must be [ε_low, ε_high] with 0 < ε_low < 1 and ε_high > 0, "
                              f"got {self.sequence_cliprange}")
        if self.policy_loss == "gspo" and self.algorithm not in PER_SEQUENCE_ADVANTAGES:
            raise ConfigError(f"policy_loss=gspo clips one ratio per response and needs one advantage per "
                              f"response; algorithm={self.algorithm} gives per-token advantages: use "
                              f"policy_loss=gspo_token, or one of {list(PER_SEQUENCE_ADVANTAGES)}")
        if self.effective_loss_aggregation == "seq-mean-token-sum-norm" and self.max_new_tokens < 1:
            raise ConfigError("loss_aggregation seq-mean-token-sum-norm divides by max_new_tokens (≥ 1)")
        if self.filters_groups and self.num_generations < 2:
            raise ConfigError(f"dynamic_sampling keeps the groups of responses to one prompt whose scores differ: "
                              f"set num_generations >= 2 (got {self.num_generations}), or dynamic_sampling: false")
        if self.max_sampling_rounds < 1:
            raise ConfigError(f"max_sampling_rounds must be ≥ 1, got {self.max_sampling_rounds}")
        if self.overlong_buffer is not None and not 1 <= self.overlong_buffer <= self.max_new_tokens:
            raise ConfigError(f"overlong_buffer must be between 1 and max_new_tokens ({self.max_new_tokens}) "
                              f"tokens (or null), got {self.overlong_buffer}")
        if self.overlong_penalty < 0:
            raise ConfigError(f"overlong_penalty must be ≥ 0, got {self.overlong_penalty}")
        if self.max_bad_steps < 0:
            raise ConfigError(f"max_bad_steps must be ≥ 0, got {self.max_bad_steps}")
        if self.critic_init != "policy" and self.value_model != "separate":
            raise ConfigError(f"critic_init={self.critic_init!r} initialises a separate critic: set "
                              "value_model='separate' too")
        if self.tis_cap is not None and self.tis_cap < 1:
            raise ConfigError(f"tis_cap must be ≥ 1 (or null), got {self.tis_cap}")
        if self.max_engine_logprob_diff <= 0:
            raise ConfigError(f"max_engine_logprob_diff must be > 0, got {self.max_engine_logprob_diff}")
        if self.adaptive_kl and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be > 0 with adaptive_kl, got {self.kl_target}")


def _accept_trl_fields(dataclass_init):
    """Wrap ``PPOConfig.__init__``: TRL 0.11's field names are accepted (``tether.compat.config``),
    and the options a program set are remembered (``_explicit``), so TRL's defaults can fill the rest
    for a TRL value-head program."""

    def __init__(self, *args, **kwargs):
        from .compat.config import drop_unchanged_arguments, split_trl_kwargs

        fields = own_fields(PPOConfig)
        names = [f.name for f in fields]
        kwargs = drop_unchanged_arguments(kwargs, dataclasses.fields(PPOConfig))
        own, trl = split_trl_kwargs(kwargs, set(names))
        explicit = set(names[: len(args)]) | set(own)
        if explicit >= set(names):  # every field passed positionally: only changed ones were set
            defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                        for f in fields}
            explicit = {n for n in own if own[n] != defaults[n]}
        object.__setattr__(self, "_explicit", explicit)
        object.__setattr__(self, "trl", trl)
        # the class lists TRL's field names too (for HfArgumentParser); an instance's fields — what
        # asdict, replace, YAML and checkpoints see — are tether's options only
        object.__setattr__(self, "__dataclass_fields__", _OWN_FIELDS)
        dataclass_init(self, *args, **own)
        object.__setattr__(self, "_tracking", True)

    __init__.__doc__ = dataclass_init.__doc__
    return __init__


def own_fields(cls) -> list[dataclasses.Field]:
    """The options of a config dataclass, without the TRL 0.11 names ``PPOConfig`` lists for
    HfArgumentParser (``tether.compat.config.argument_fields``)."""
    from .compat.config import ARGUMENT_TYPES

    return [f for f in dataclasses.fields(cls) if cls is not PPOConfig or f.name not in ARGUMENT_TYPES]


def _list_trl_arguments() -> None:
    from .compat.config import argument_fields

    shadow = dataclasses.make_dataclass("TRLArguments", argument_fields())
    for f in dataclasses.fields(shadow):
        PPOConfig.__dataclass_fields__.setdefault(f.name, f)
        PPOConfig.__annotations__.setdefault(f.name, f.type)  # HfArgumentParser reads the type hints


PPOConfig.__init__ = _accept_trl_fields(PPOConfig.__init__)
_list_trl_arguments()


def _ppo_config_setattr(self, name: str, value: Any) -> None:
    """Set an option; a TRL 0.11 name set after construction (``config.kl_penalty = "abs"``) sets the
    tether option it maps to, or the TRL-only field, as the constructor would have."""
    if self.__dict__.get("_tracking") and name not in self.__dict__ and name not in _FIELD_NAMES:
        from .compat.config import set_trl_field

        target = set_trl_field(self, name, value)
        if target is None:
            return
        name, value = target
    object.__setattr__(self, name, value)
    if self.__dict__.get("_tracking"):
        self.__dict__["_explicit"].add(name)


def _ppo_config_getattr(self, name: str) -> Any:
    """TRL 0.11 field names that tether keeps as given (``query_dataset``, ``log_with``, ...) or maps."""
    if name.startswith("_") or name == "trl":
        raise AttributeError(name)
    from .compat.config import trl_field

    return trl_field(self, name)


def _ppo_config_to_dict(self) -> dict:
    """TRL's ``to_dict``: every option (and the TRL-only fields given), flattened."""
    return {**{f.name: getattr(self, f.name) for f in own_fields(PPOConfig)}, **self.__dict__.get("trl", {})}


_OWN_FIELDS = {f.name: f for f in own_fields(PPOConfig)}
_FIELD_NAMES = frozenset(_OWN_FIELDS)


def _ppo_config_getstate(self) -> dict:
    """Pickle / deepcopy state: the instance's field view is restored by ``__setstate__``, not copied."""
    return {k: v for k, v in self.__dict__.items() if k != "__dataclass_fields__"}


def _ppo_config_setstate(self, state: dict) -> None:
    self.__dict__.update(state)
    self.__dict__["__dataclass_fields__"] = _OWN_FIELDS


PPOConfig.__getstate__ = _ppo_config_getstate
PPOConfig.__setstate__ = _ppo_config_setstate
PPOConfig.__setattr__ = _ppo_config_setattr
PPOConfig.__getattr__ = _ppo_config_getattr
PPOConfig.to_dict = _ppo_config_to_dict


@dataclass
class ModelConfig:
    """The policy to train."""

    name_or_path: str = "smollm2-135m-instruct"
    """HF id, local directory, or .gguf path. 'smollm2-135m-instruct' is the packaged offline model."""
    gguf_file: str | None = None
    """GGUF file name inside name_or_path (dequantised on load)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Run model code from the model repo. Off unless you trust it."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (peft); lora.r = 0 trains the full model."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype: {self.dtype!r} is not one of {sorted(DTYPES)}")


@dataclass
class DataConfig:
    """The prompt dataset of train()."""

    path: str = "builtin:instructions"
    """JSONL, CSV or Parquet file (a 'prompt' or 'messages' field per row), a datasets save_to_disk
    directory, or builtin:instructions (prompts shipped with tether)."""
    prompt_field: str = "prompt"
    """Field that holds the prompt (string or chat messages)."""
    epochs: int = 1
    """Passes over the prompts."""
    max_iterations: int | None = None
    """Stop after this many PPO iterations (None: run all epochs)."""


@dataclass
class RewardSpec:
    """Where scores come from: a built-in rule, a sequence-classification reward model or an HTTP server."""

    rule: str | None = "keyword"
    """Built-in rule: keyword | length | exclamation | sentiment (ignored when model or url is set)."""
    rule_args: dict = field(default_factory=dict)
    """Keyword arguments of the rule (keyword: words, cap; length: target_words; exclamation: cap)."""
    model: str | None = None
    """Path or id of a reward model (AutoModelForSequenceClassification, num_labels=1)."""
    url: str | None = None
    """HTTP reward server instead (POST {prompts, completions} -> {scores}); a bearer token is read from
    $TETHER_REWARD_TOKEN. Only prompt and completion text are sent."""
    timeout: float = 30.0
    """Seconds per reward-server request."""
    retries: int = 3
    """Retries of a failed reward-server request (connection error, timeout, 429, 5xx), backoff 1, 2, 4 s."""
    batch_size: int = 16
    """Reward-model scoring batch size (rows per request for a server)."""


@dataclass
class RolloutConfig:
    """Which engine samples the responses (``tether.rollout``)."""

    engine: str = "hf"
    """hf: transformers' generate on the policy itself | vllm: an in-process vLLM engine holding a copy
    of the policy's weights, updated every iteration (install: scripts/setup-vllm.sh on a CPU,
    pip install 'tether-rlhf[vllm]' on a GPU)."""
    gpu_memory_utilization: float = 0.3
    """vllm on a GPU: the share of GPU memory vLLM may take (weights + KV cache)."""
    kv_cache_gib: float = 1.0
    """vllm on a CPU: the KV-cache size in GiB."""
    max_model_len: int | None = None
    """vllm: longest prompt + response in tokens (null: the model's, at most 4096)."""
    enforce_eager: bool = False
    """vllm: no torch.compile / CUDA graphs (starts faster, samples slower)."""
    sleep: bool = True
    """vllm on a GPU: free the engine's memory while the trainer trains (vLLM's sleep mode)."""

    def __post_init__(self):
        if self.engine not in ROLLOUT_ENGINES:
            raise ConfigError(f"rollout.engine: {self.engine!r} is not one of {list(ROLLOUT_ENGINES)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"rollout.kv_cache_gib must be > 0, got {self.kv_cache_gib}")

    def make_engine(self, precision=None):
        """The engine this section describes (None: the trainer's default HF engine on the policy).
        ``precision``: the trainer's ``Precision`` (its frozen dtype is the engine's)."""
        if self.engine == "hf":
            return None
        from .rollout.vllm import VLLMEngine

        dtype = precision.frozen_dtype if precision is not None else None  # None: the policy's (fp32)
        return VLLMEngine(dtype=dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                          kv_cache_gib=self.kv_cache_gib, max_model_len=self.max_model_len,
                          enforce_eager=self.enforce_eager, sleep=self.sleep)


ROLLOUT_ENGINES = ("hf", "vllm")


@dataclass
class RunConfig:
    """A whole `tether ppo` run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardSpec = field(default_factory=RewardSpec)
    train: PPOConfig = field(default_factory=PPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    output_dir: str = "runs/ppo"
    """Directory for metrics, samples and checkpoints."""
    save_every: int = 25
    """Write a resumable checkpoint (weights, optimiser, RNG, data position) to checkpoints/ every N
    iterations; 0: none (a stop signal or a reward error still writes one)."""
    keep_checkpoints: int = 2
    """Keep the newest K checkpoints under checkpoints/ (0: keep all)."""
    report_to: list[str] = field(default_factory=list)
    """Metric sinks besides metrics.jsonl: tensorboard | wandb | mlflow (installed as extras)."""

    def __post_init__(self):
        _check_report_to(self.report_to)


@dataclass
class RewardConfig:
    """Reward-model training on preference pairs (Bradley–Terry loss)."""

    learning_rate: float = 5e-5
    """AdamW learning rate."""
    batch_size: int = 16
    """Pairs per optimiser step (each pair is two sequences in one forward)."""
    epochs: int = 2
    """Passes over the training pairs."""
    max_length: int = 256
    """Tokens per (prompt, completion) sequence; longer ones lose prompt tokens first, with a warning."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Fraction of the steps with a linear learning-rate warm-up (then linear decay to 0)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm; None disables clipping."""
    use_margin: bool = True
    """Use a pair's 'margin' field (if present) in the loss: -log σ(r_c − r_r − margin)."""
    normalize: bool = True
    """After training, store shift/scale so the completions of the data (or the reference policy's
    samples, when given) score mean 0 and std 1; the scorer applies them."""
    seed: int = 0
    """Seed for initialisation and shuffling."""
    precision: str = "auto"
    """fp32 | bf16-mixed | auto, as for PPO: forwards under bf16 autocast with float32 weights and
    AdamW state; auto follows the hardware."""

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16-mixed"):
            raise ConfigError(f"precision: {self.precision!r} is not one of ['auto', 'fp32', 'bf16-mixed']")
        for name in ("batch_size", "epochs", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate < 0:
            raise ConfigError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class PreferenceDataConfig:
    """Preference pairs of `tether rm`."""

    path: str = ""
    """JSONL / CSV / Parquet file or save_to_disk directory with prompt / chosen / rejected (text or chat
    messages)."""
    eval_path: str | None = None
    """Held-out pairs; None holds out eval_fraction of path."""
    eval_fraction: float = 0.1
    """Share of the pairs held out for accuracy when eval_path is not set."""

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class RMRunConfig:
    """A whole `tether rm` run."""

    model: str = "all-minilm-l6-v2"
    """Backbone: HF id or directory of any AutoModelForSequenceClassification-compatible model
    ('all-minilm-l6-v2' is the packaged offline encoder); a one-label head is added if missing."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Run model code from the model repo. Off unless you trust it."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: RewardConfig = field(default_factory=RewardConfig)
    output_dir: str = "runs/rm"
    """Directory for metrics and the trained reward model."""
    report_to: list[str] = field(default_factory=list)
    """Metric sinks besides metrics.jsonl: tensorboard | wandb | mlflow (installed as extras)."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {sorted(DTYPES)}")
        _check_report_to(self.report_to)


def _check_report_to(names: list[str]) -> None:
    from .tracking.sinks import REPORT_TO

    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ConfigError(f"report_to: unknown sink(s) {unknown}; choose from {list(REPORT_TO)}")


# ---------------------------------------------------------------- dict / YAML <-> dataclasses

def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source)."""
    import ast as _ast

    try:
        tree = _ast.parse(inspect.getsource(cls).lstrip())
    except (OSError, TypeError):
        return {}
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, _ast.AnnAssign) and isinstance(node.target, _ast.Name):
            if isinstance(nxt, _ast.Expr) and isinstance(getattr(nxt, "value", None), _ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def field_groups(cls) -> dict[str, str]:
    """Field name -> the ``# --- group ---`` comment above it in the class source ("" before any)."""
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    groups, current = {}, ""
    for line in source.splitlines():
        heading = re.match(r"\s*# --- (.+?) ---", line)
        if heading:
            current = heading.group(1)
            continue
        declared = re.match(r"    (\w+): ", line)
        if declared:
            groups[declared.group(1)] = current
    return groups


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(hint, value, prefix=f"{where}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-6" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in own_fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown option '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}" if prefix and not str(err).startswith(prefix) else str(err)) from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), the value read as YAML (numbers, true/false, null, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.option=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_run_config(path: str | Path | None, overrides: list[str] = (), cls=None):
    """Read a YAML run config (or the defaults when ``path`` is None) and apply dotted overrides.

    ``cls``: the config dataclass (default ``RunConfig``; ``RMRunConfig`` for `tether rm`)."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    where = f"{path}: " if path else ""
    try:
        return from_dict(cls or RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def save_run_config(config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = ["ConfigError", "DataConfig", "ModelConfig", "PPOConfig", "PreferenceDataConfig", "RMRunConfig",
           "RewardConfig", "RewardSpec", "RunConfig",
           "field_docs", "from_dict", "load_run_config", "parse_override", "save_run_config", "to_dict"]
