"""What ``PPOTrainer`` needs to take TRL 0.11 programs as they are: the positional order of TRL's
constructor, value-head models, ``dataloader``, an ``accelerator`` with the attributes programs use,
and TRL's stats keys. The PPO iteration itself is tether's (``tether.train.ppo``)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..algo import kl_penalty, masked_sum
from ..tracking.sinks import check_report_to
from .models import PreTrainedModelWrapper

logger = logging.getLogger(__name__)

TRL_ARGUMENTS = ("ref_model", "tokenizer", "dataset", "optimizer", "data_collator", "num_shared_layers",
                 "lr_scheduler", "training_data_collator")


def is_tokenizer(x: Any) -> bool:
    return hasattr(x, "pad_token_id") and hasattr(x, "convert_tokens_to_ids")


def positional_arguments(third: Any, rest: tuple) -> dict[str, Any]:
    """Name the positional arguments after ``(config, model)``: tether's order ``(tokenizer,
    dataset)`` when the third is a tokenizer, else TRL 0.11's ``(ref_model, tokenizer, dataset,
    optimizer, data_collator, num_shared_layers, lr_scheduler, training_data_collator)`` — so
    ``PPOTrainer(config, model, None, tokenizer, ...)`` works."""
    args = (third, *rest)
    if not args or (third is not None and is_tokenizer(third)):
        names = ("tokenizer", "dataset")
    else:
        names = TRL_ARGUMENTS
    if len(args) > len(names):
        raise TypeError(f"PPOTrainer: too many positional arguments ({len(args) + 2}); "
                        f"after (config, model) it takes {', '.join(names)}")
    return {name: value for name, value in zip(names, args) if not (name == "tokenizer" and value is None)}


@dataclass
class Unwrapped:
    """A TRL value-head program's models, as tether trains them."""

    policy: nn.Module  # the causal LM (possibly peft) inside the wrapper
    value_head: nn.Module | None  # the wrapper's v_head
    ref_model: nn.Module | None  # a plain causal LM, or None (LoRA: adapters disabled)
    wrapper: PreTrainedModelWrapper | None  # what the program passed, for trainer.model
    given_ref: nn.Module | None = None  # the ref_model argument as the program passed it


def unwrap_models(model, ref_model, num_shared_layers: int | None) -> Unwrapped:
    """Take the language models out of TRL value-head wrappers; build TRL's reference
    (``create_reference_model`` with ``num_shared_layers``) when the program gave none."""
    from .models import create_reference_model

    if not isinstance(model, PreTrainedModelWrapper):
        if num_shared_layers is not None and ref_model is None:
            ref_model = create_reference_model(model, num_shared_layers=num_shared_layers)
        return Unwrapped(model, None, ref_model, None)
    given = ref_model
    if ref_model is not None and num_shared_layers is not None:
        warnings.warn("num_shared_layers is ignored when ref_model is provided: two different models are used "
                      "for the model and the reference model, and no layers are shared.", UserWarning, stacklevel=4)
    if ref_model is None and num_shared_layers is not None and not model.is_peft_model:
        given = ref_model = create_reference_model(model, num_shared_layers=num_shared_layers)
    if isinstance(ref_model, PreTrainedModelWrapper):
        ref_model = ref_model.pretrained_model
    model.v_head.eval()  # dropout off in every forward [H24]
    return Unwrapped(model.pretrained_model, model.v_head, ref_model, model, given)


def reference_wrapper(models: Unwrapped, ref: nn.Module | None):
    """TRL's ``ppo_trainer.ref_model`` for a value-head program: the wrapper the program passed, a
    frozen value-head wrapper around tether's reference copy (TRL made one with
    ``create_reference_model``), or None when the reference is the peft policy with adapters off."""
    given = models.given_ref
    if isinstance(given, PreTrainedModelWrapper):
        return given
    if ref is None:
        return None
    if given is not None:  # a plain model given: TRL refused it; tether trains against it as it is
        return given
    return type(models.wrapper).around(ref, models.wrapper.v_head)


def trl_precision(config, policy: nn.Module, device):
    """The precision of a TRL value-head program: what it asked for (``precision=``, accelerate's
    ``mixed_precision="bf16"`` in ``accelerator_kwargs``, or a model loaded in bf16), else fp32 as
    TRL ran — and when the hardware has a faster mode, one message that says how to turn it on."""
    from ..train.precision import Precision

    if "precision" in config.__dict__.get("_explicit", set()):
        return Precision.resolve(config.precision, device)
    asked = str(config.trl.get("accelerator_kwargs", {}).get("mixed_precision", "no"))
    if asked in ("fp16", "bf16"):
        if asked == "fp16":
            logger.warning("accelerator_kwargs mixed_precision='fp16': tether's mixed precision is bf16 "
                           "(fp32 master weights, no loss scaling); running bf16-mixed")
        return Precision("bf16-mixed", torch.device(device).type, f"accelerator_kwargs mixed_precision={asked!r}")
    if any(p.dtype == torch.bfloat16 for p in policy.parameters() if p.is_floating_point()):
        return Precision("bf16-mixed", torch.device(device).type, "the model was loaded in bf16")
    fastest = Precision.resolve("auto", device)
    if fastest.mixed and fastest.reason != "$TETHER_PRECISION":
        logger.warning("TRL program: running in fp32, as TRL did. This %s runs bf16-mixed faster (fp32 master "
                       "weights): PPOConfig(precision='bf16-mixed') turns it on", fastest.reason)
    return Precision("fp32", torch.device(device).type, "a TRL program that asked for no mixed precision")


def trl_scores(scores: torch.Tensor, config, running, all_reduce) -> torch.Tensor:
    """TRL 0.11's score handling in ``step``, before anything else sees the scores:
    ``use_score_scaling`` divides by the running std of all scores so far (+ float eps) — with
    ``use_score_norm`` after subtracting their running mean — then ``score_clip`` clips.
    (TRL 0.11.4 crashed in ``step`` with ``use_score_scaling=True``; this is what its docs describe.)"""
    if config.trl.get("use_score_scaling"):
        running.update(scores, all_reduce)
        factor = running.std + torch.finfo(scores.dtype).eps
        scores = (scores - running.mean) / factor if config.trl.get("use_score_norm") else scores / factor
    if config.score_clip is not None:
        scores = scores.clamp(-config.score_clip, config.score_clip)
    return scores


def make_dataloader(dataset, batch_size: int, data_collator, dist, remove_unused_columns: bool,
                    model: nn.Module | None, seed: int):
    """TRL's ``ppo_trainer.dataloader``: shuffled, ``batch_size`` rows, last partial batch dropped,
    ``data_collator`` as ``collate_fn``. A ``datasets.Dataset`` loses the columns the model's forward
    does not take (keeping ``query``, ``response``, ``label``) unless ``remove_unused_columns=False``.
    Under torchrun each process iterates over its own shard. None for datasets it cannot index."""
    if dataset is None or isinstance(dataset, (str, bytes)) or not hasattr(dataset, "__getitem__"):
        return None
    if remove_unused_columns and hasattr(dataset, "column_names") and hasattr(dataset, "remove_columns"):
        keep = set(inspect.signature((model or nn.Identity()).forward).parameters) | {"label", "query", "response"}
        unused = [c for c in dataset.column_names if c not in keep]
        if unused:
            dataset = dataset.remove_columns(unused)
    sampler = None
    if dist.enabled:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                                      shuffle=True, seed=seed, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=data_collator,
                                       shuffle=sampler is None, sampler=sampler, drop_last=True)


class Accelerator:
    """The parts of ``accelerate.Accelerator`` that TRL PPO programs use, on tether's process group."""

    def __init__(self, trainer):
        self._trainer = trainer
        self._dist = trainer.dist

    device = property(lambda self: self._trainer.device)
    is_main_process = property(lambda self: self._dist.is_main)
    is_local_main_process = property(lambda self: self._dist.local_rank == 0)
    is_last_process = property(lambda self: self._dist.rank == self._dist.world_size - 1)
    num_processes = property(lambda self: self._dist.world_size)
    process_index = property(lambda self: self._dist.rank)
    local_process_index = property(lambda self: self._dist.local_rank)
    use_distributed = property(lambda self: self._dist.enabled)
    mixed_precision = property(lambda self: "bf16" if self._trainer.precision.mixed else "no")

    @property
    def state(self):
        """``accelerator.state``: process counts and no DeepSpeed plugin."""
        from types import SimpleNamespace

        return SimpleNamespace(deepspeed_plugin=None, num_processes=self.num_processes, process_index=self.process_index,
                               local_process_index=self.local_process_index, device=self.device,
                               distributed_type="MULTI" if self.use_distributed else "NO",
                               mixed_precision=self.mixed_precision)

    def unwrap_model(self, model, keep_fp32_wrapper: bool = True):
        return getattr(model, "module", model)

    def wait_for_everyone(self) -> None:
        self._dist.barrier()

    def print(self, *args, **kwargs) -> None:
        if self._dist.is_main:
            print(*args, **kwargs)

    def log(self, values: dict, step: int | None = None, log_kwargs: dict | None = None) -> None:
        """Scalars of ``values`` to the trainer's metric sinks (main process)."""
        self._trainer.log_metrics(values, step)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation over processes along dim 0."""
        return self._dist.gather(tensor if tensor.dim() else tensor.unsqueeze(0))

    gather_for_metrics = gather

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        total = self._dist.sum(tensor.clone())
        return total / self._dist.world_size if reduction == "mean" else total

    def prepare(self, *objects):
        return objects[0] if len(objects) == 1 else objects

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        loss.backward(**kwargs)

    def accumulate(self, *models):
        return contextlib.nullcontext()

    def autocast(self, *args, **kwargs):
        return contextlib.nullcontext()

    def free_memory(self, *objects):
        return objects

    def save(self, obj, path, **kwargs) -> None:
        if self._dist.is_main:
            torch.save(obj, path)


def trl_stats(stats: dict[str, float], experience, query_lens: list[int], dist, arrays: bool,
              response_lens: list[int] | None = None) -> dict[str, Any]:
    """TRL 0.11's stats keys computed from one iteration (tether's keys stay alongside), over the
    global batch like tether's own. ``response_lens``: the responses' lengths as the program gave
    them (TRL's ``tokens/responses_*``: masked tokens and a decoder's start token counted); default
    the trained tokens.

    ``arrays``: also the distributions TRL logged as arrays (``objective/kl_dist``,
    ``objective/logprobs``, ``ppo/policy/advantages``, ``tokens/*_dist``, ...; this process's rows)."""
    mask = experience.response_mask
    kl = kl_penalty(experience.logprobs, experience.ref_logprobs, "k1")
    moments = {}
    for name, x in (("adv", experience.advantages), ("ret", experience.returns), ("val", experience.values),
                    ("kl", kl)):
        moments[name + "1"] = masked_sum(x, mask).item()
        moments[name + "2"] = masked_sum(x.square(), mask).item()
    moments["n"] = float(mask.sum().item())
    moments = dist.sum_floats(moments)
    n = max(moments["n"], 1.0)
    mean = {k: moments[k + "1"] / n for k in ("adv", "ret", "val", "kl")}
    var = {k: (moments[k + "2"] - n * mean[k] ** 2) / max(n - 1, 1.0) for k in ("adv", "ret", "val")}
    given = mask.sum(1).float() if response_lens is None else torch.tensor(response_lens, dtype=torch.float,
                                                                             device=mask.device)
    lens = dist.gather(torch.stack([torch.tensor(query_lens, dtype=torch.float, device=mask.device), given], dim=1))
    q, r = lens[:, 0].cpu(), lens[:, 1].cpu()
    out: dict[str, Any] = {
        "ppo/mean_scores": stats["objective/scores"],
        "ppo/std_scores": stats["env/reward_std"],
        "ppo/mean_non_score_reward": -stats["objective/kl_coef"] * mean["kl"],
        "tokens/queries_len_mean": q.mean().item(),
        "tokens/queries_len_std": q.std().item() if len(q) > 1 else 0.0,
        "tokens/responses_len_mean": r.mean().item(),
        "tokens/responses_len_std": r.std().item() if len(r) > 1 else 0.0,
        "ppo/policy/entropy": stats["objective/entropy"],
        "ppo/policy/advantages_mean": mean["adv"],
        "ppo/returns/mean": mean["ret"],
        "ppo/returns/var": var["ret"],
        "ppo/val/mean": mean["val"],
        "ppo/val/var": var["val"],
        "ppo/learning_rate": stats["lr"],
        "time/ppo/forward_pass": stats.get("time/experience", 0.0),
        "time/ppo/compute_rewards": 0.0,  # inside the experience pass
        "time/ppo/compute_advantages": 0.0,  # inside the experience pass
        "time/ppo/optimize_step": stats["time/step"] - stats.get("time/experience", 0.0),
        "time/ppo/calc_stats": 0.0,
        "time/ppo/total": stats["time/step"],
    }
    for trl_key, key in (("ppo/loss/policy", "loss/policy"), ("ppo/loss/value", "loss/value"),
                         ("ppo/loss/total", "loss/total"), ("ppo/policy/approxkl", "policy/approxkl"),
                         ("ppo/policy/policykl", "policy/policykl"), ("ppo/policy/clipfrac", "policy/clipfrac"),
                         ("ppo/val/vpred", "val/vpred"), ("ppo/val/error", "val/error"),
                         ("ppo/val/clipfrac", "val/clipfrac")):
        out[trl_key] = stats.get(key, 0.0)
    out["ppo/val/var_explained"] = 1 - out["ppo/val/error"] / var["ret"] if var["ret"] > 0 else 0.0
    if arrays:
        as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        out.update({
            "objective/kl_dist": as_np(masked_sum(kl, mask, dim=1)),
            "objective/logprobs": as_np(experience.logprobs),
            "objective/ref_logprobs": as_np(experience.ref_logprobs),
            "ppo/policy/advantages": as_np(experience.advantages[mask]),
            "ppo/policy/ratio": np.array([stats.get("policy/ratio_mean", 1.0)]),
            "tokens/queries_dist": q.numpy(),
            "tokens/responses_dist": r.numpy(),
        })
    return out


class ProgramSchedule:
    """Stands in for tether's LR schedule when the program brings its own ``lr_scheduler``."""

    def step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def log_stats(trainer, stats: dict, batch: dict, rewards, columns_to_log: Sequence[str] = ("query", "response")) -> None:
    """``PPOTrainer.log_stats`` (TRL 0.11's)."""
    values = torch.tensor([float(r.item() if hasattr(r, "item") else r) for r in rewards], device=trainer.device)
    values = trainer.dist.gather(values)
    if not trainer.dist.is_main or trainer.sink is None:
        return
    trainer.current_step += 1
    logs = {**stats, "env/reward_mean": values.mean().item(),
            "env/reward_std": values.std().item() if values.numel() > 1 else 0.0}
    trainer.log_metrics(logs, trainer.iteration)
    if not all(c in batch for c in columns_to_log[:2]):
        trainer._warn_once("log_stats columns", f"log_stats: the batch has no {list(columns_to_log)} columns; "
                           "samples are not logged")
        return
    queries, responses = (list(batch[c]) for c in columns_to_log[:2])
    path = trainer.sink.path.parent / "samples.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        for q, r, sc in zip(queries, responses, values.tolist()):
            handle.write(json.dumps({"iteration": trainer.iteration, "prompt": q if isinstance(q, (str, list)) else
                                     str(q), "completion": r if isinstance(r, str) else str(r), "score": sc}) + "\n")


def trl_sampling_departures(gen_kwargs: dict) -> list[tuple[str, str]]:
    """``(key, message)`` for each way tether's sampling departs from TRL's on purpose, for these
    ``generate`` arguments (the trainer says each once)."""
    out = []
    if gen_kwargs.get("do_sample", True) and "top_k" not in gen_kwargs and "top_p" not in gen_kwargs:
        out.append(("top_k", "generate: TRL sampled with transformers' defaults here (top_k=50 and the "
                        "checkpoint's generation_config) but scored the full softmax; tether samples the full "
                        "softmax (top_k=0, top_p=1), the distribution it scores. Pass top_k= to restrict it."))
    if float(gen_kwargs.get("temperature", 1.0)) != 1.0:
        out.append(("temperature", "generate: TRL scored samples at temperature 1 whatever they were sampled "
                        "at; tether scores them at the sampling temperature, so old and new logprobs match [H24]"))
    return out


def trl_step_departures(config, encoder_decoder: bool) -> list[tuple[str, str]]:
    """``(key, message)`` for each way tether's ``step`` departs from TRL 0.11's on purpose, for this
    config and policy (the trainer says each once)."""
    out = []
    if config.whiten_rewards:
        out.append(("whiten_rewards", "whiten_rewards: tether whitens the per-token rewards over the response "
                    "tokens; TRL 0.11 also gave every padding position after a response the whitened value of 0, "
                    "which its GAE carried into the response's advantages (its update depended on how much padding "
                    "the batch had). The updates differ by that amount (docs/coming-from-trl.md)"))
    if encoder_decoder:
        out.append(("seq2seq first token", "encoder-decoder policy: tether trains on every response token; TRL 0.11 "
                    "left the first token after the decoder's start token out of the loss, KL and values (an "
                    "off-by-one in its batched_forward_pass)"))
    return out


def trl_tracker(trainer):
    """TRL's ``log_with`` (tensorboard / wandb): sinks under ``project_kwargs['logging_dir']``
    (default ``runs/<exp_name>``); a tracker that is not installed is skipped with a warning."""
    log_with = trainer.config.trl.get("log_with")
    if not log_with:
        return None
    run_dir = Path(trainer.config.trl.get("project_kwargs", {}).get("logging_dir") or f"runs/{trainer.config.exp_name}")
    try:
        trainer.report_to = check_report_to([log_with])
        return trainer._make_sink(run_dir)
    except (ImportError, ValueError) as err:
        logger.warning("log_with=%r: %s; metrics go to %s/metrics.jsonl only", log_with, err, run_dir)
        trainer.report_to = []
        return trainer._make_sink(run_dir)


__all__ = ["Accelerator", "ProgramSchedule", "log_stats", "reference_wrapper", "trl_precision", "trl_scores", "trl_step_departures", "trl_sampling_departures", "trl_tracker", "is_tokenizer", "make_dataloader", "positional_arguments", "trl_stats", "unwrap_models"]
