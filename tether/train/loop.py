"""The dataset loop of ``PPOTrainer.train``: prompt order by epoch, one PPO iteration per global
batch (sample -> reward -> ``PPOLearner.learn``), progress, checkpoint cadence, resume, stop signals.

Nothing here is PPO maths (ppo.py) or file layout (persistence.py): this file decides *when* things
happen. State it reads and writes lives on the trainer (``trainer.ppo`` for the learner's) and on the
``DataPosition`` it carries from batch to batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.prompts import DataError, limit_prompt_lengths, load_prompts, tokenize_prompts
from ..rewards.base import NonFiniteRewardError, RewardError, call_reward
from ..algo import informative_groups
from ..rollout import Rollout, SamplingParams, concat_rollouts
from ..tracking import checkpoint_name, format_stats, latest_checkpoint, prune_checkpoints, truncate_jsonl
from ..tracking.memory import phase_memory
from .estimators import shape_scores
from .faults import NumericalError
from .persistence import DataPosition, capture_rng, fingerprint
from .signals import StopRequests, TrainingInterrupted

logger = logging.getLogger(__name__)


def train_on_dataset(trainer, dataset=None, reward_fn: Callable | None = None, epochs: int = 1,
                     max_iterations: int | None = None, output_dir: str | Path | None = None,
                     save_every: int = 0, keep_checkpoints: int = 0, resume: str | Path | None = None,
                     progress: bool | None = None, prompt_field: str = "prompt",
                     prompt_formatter: Callable[[dict], Any] | None = None) -> list[dict[str, float]]:
    """``trainer.train(...)``: see ``PPOTrainer.train`` for the arguments."""
    from tqdm.auto import tqdm

    cfg = trainer.config
    prompts = load_prompts(dataset if dataset is not None else trainer.dataset, prompt_field, prompt_formatter)
    reward = reward_fn if reward_fn is not None else trainer.reward_fn
    if reward is None:
        raise ValueError("train() needs a reward: pass reward_fn= or reward_model=")
    start_position = DataPosition(num_prompts=len(prompts), fingerprint=fingerprint(prompts))
    token_ids = tokenize_prompts(prompts, trainer.tokenizer, None, cfg.use_chat_template)
    token_ids, kept = limit_prompt_lengths(token_ids, cfg.max_prompt_length, cfg.prompt_overflow)
    prompts = [prompts[i] for i in kept]
    k = cfg.num_generations
    bs = cfg.batch_size // k  # prompts per iteration; each is sampled k times
    global_bs = bs * trainer.dist.world_size  # each rank takes its slice of a global batch
    if len(prompts) < global_bs:
        raise ValueError(f"the dataset has {len(prompts)} prompts, fewer than the {global_bs} an iteration needs "
                         f"(batch_size={cfg.batch_size} / num_generations={k} x {trainer.dist.world_size} processes)")
    per_epoch = len(prompts) // global_bs
    total = per_epoch * epochs if max_iterations is None else min(max_iterations, per_epoch * epochs)
    if len(prompts) % global_bs:
        # each epoch draws a new order, so a run planned over several epochs leaves out a different set each
        # epoch (max_iterations only stops it early: a run trained in segments, as the study's, plans them all)
        reshuffled = epochs > 1
        logger.log(logging.INFO if reshuffled else logging.WARNING,
                   "%d prompts do not fill a batch of %d: each epoch leaves out %d of its shuffled order%s",
                   len(prompts) % global_bs, global_bs, len(prompts) % global_bs,
                   " (a different set each epoch)" if reshuffled else "; they are not trained on in this run")
    if cfg.total_steps is None:
        cfg.total_steps = total
    out = Path(output_dir) if output_dir else None
    own_sink = out is not None and trainer.sink is None
    if own_sink:
        trainer.sink = trainer._make_sink(out)
    position = start_position if resume is None else _resume(trainer, resume, out, start_position, global_bs)
    params = trainer._sampling_params({}, None)
    history: list[dict[str, float]] = []
    saved: Path | None = None
    bar = tqdm(total=total, initial=position.batches, desc="ppo", unit="it",
               disable=not (show_progress(progress) and trainer.dist.is_main))
    stop_signal = None
    with StopRequests(enabled=out is not None) as stop:
        while position.batches < total:
            if out is not None and trainer.dist.any(stop.requested is not None):  # every rank stops together
                stop_signal = stop.requested or "SIGTERM"
                break
            position = _with_order(trainer, position, len(prompts))
            trainer.boundary = (capture_rng(trainer.ppo.shuffle_generator), position)
            try:
                stats, position = _train_iteration(trainer, position, prompts, token_ids, reward, params, out)
            except (RewardError, NumericalError) as err:
                if out is not None:  # nothing lost: the state of the last complete iteration
                    path = _save_run_checkpoint(trainer, out, keep_checkpoints)
                    err.args = (f"{err.args[0]}\n(checkpoint of the last complete iteration: {path}; "
                                "continue with resume='latest' / --resume)",)
                raise
            trainer.boundary = (capture_rng(trainer.ppo.shuffle_generator), position)
            if stats is not None:
                history.append(stats)
                bar.set_postfix_str(format_stats(stats, ("env/reward_mean", "objective/kl")))
                if bar.disable and trainer.dist.is_main and (trainer.iteration % 10 == 0 or trainer.iteration in (1, total)):
                    logger.info("iteration %d/%d %s", trainer.iteration, total, format_stats(stats))
            bar.update(1)
            if out is not None and save_every and trainer.iteration % save_every == 0:
                saved = _save_run_checkpoint(trainer, out, keep_checkpoints)
        bar.close()
        if stop_signal is not None:
            if saved is None or saved.name != checkpoint_name(trainer.iteration):
                saved = _save_run_checkpoint(trainer, out, keep_checkpoints)
            raise TrainingInterrupted(stop_signal, saved)
    if out is not None:
        trainer.save_pretrained(out / "final")
    if own_sink and trainer.sink is not None:
        trainer.sink.close()
        trainer.sink = None
    return history



def _with_order(trainer, position: DataPosition, num_prompts: int) -> DataPosition:
    """``position`` with its epoch's prompt order drawn, if it is not yet (at the start of an epoch)."""
    if position.order is not None:
        return position
    order = torch.randperm(num_prompts, generator=trainer.ppo.shuffle_generator).tolist()
    return dataclasses.replace(position, order=order)


@dataclasses.dataclass
class _Batch:
    """One rank's sampled and scored rows (groups of ``num_generations`` consecutive rows)."""

    prompts: list
    rollout: Rollout
    completions: list[str]
    scores: torch.Tensor  # [B] raw scores

    def groups(self, index: list[int], k: int) -> _Batch:
        rows = [g * k + j for g in index for j in range(k)]
        return _Batch([self.prompts[i] for i in rows], self.rollout.select(torch.tensor(rows, device=self.scores.device)),
                      [self.completions[i] for i in rows], self.scores[rows])


def _draw(trainer, position: DataPosition, prompts: list, token_ids: list, reward: Callable,
          params: SamplingParams) -> tuple[_Batch | None, float, float]:
    """Sample and score this rank's slice of the global batch at ``position``:
    ``(batch or None when non-finite scores skip it, generation seconds, reward seconds)``."""
    cfg, k = trainer.config, trainer.config.num_generations
    bs = cfg.batch_size // k
    start = position.offset + trainer.dist.rank * bs
    rows = position.order[start : start + bs]
    idx = [i for i in rows for _ in range(k)]  # groups of k rows
    batch_prompts = [prompts[i] for i in idx]
    t0 = time.perf_counter()
    rollout = trainer._sample([token_ids[i] for i in idx], params)
    t_gen = time.perf_counter() - t0
    completions = trainer._decode(rollout)
    t0 = time.perf_counter()
    failure: RewardError | None = None
    scores = None
    try:
        with trainer.dist.scoring(reward):  # a sharded reward model: gathered for this call
            scores = call_reward(reward, batch_prompts, completions).to(trainer.device)
    except RewardError as err:
        failure = err
    if trainer.dist.any(failure is not None):  # one rank's bad reward stops or skips every rank
        if failure is None:
            failure = RewardError("the reward failed on another process (see its log)")
        if not isinstance(failure, NonFiniteRewardError):
            raise failure
        trainer.faults.bad(f"iteration {trainer.iteration + 1}: {failure}")
        return None, t_gen, time.perf_counter() - t0
    return _Batch(batch_prompts, rollout, completions, scores), t_gen, time.perf_counter() - t0


def _train_iteration(trainer, position: DataPosition, prompts: list, token_ids: list[list[int]], reward: Callable,
                     params: SamplingParams, out: Path | None) -> tuple[dict[str, float] | None, DataPosition]:
    """Sample, score and update on one batch: ``(stats, the position after it)``; stats are None when
    non-finite scores skip the iteration. Under dynamic sampling, draws global batches until every rank
    holds a batch of informative groups (``_fill_informative``)."""
    cfg = trainer.config
    global_bs = cfg.batch_size // cfg.num_generations * trainer.dist.world_size
    if cfg.filters_groups:
        batch, position, t_gen, t_reward, extra = _fill_informative(trainer, position, prompts, token_ids, reward,
                                                                    params)
    else:
        batch, t_gen, t_reward = _draw(trainer, position, prompts, token_ids, reward, params)
        position, extra = position.advanced(global_bs, len(prompts)), {}
    if batch is None:
        return None, position
    rollout_memory = phase_memory("rollout", trainer.device)  # after sampling and scoring
    stats = trainer.ppo.learn(batch.rollout, batch.scores)
    stats.update(rollout_memory)
    stats.update(extra)
    stats = trainer.record(stats, generate_seconds=t_gen, reward_seconds=t_reward)
    if out is not None and trainer.dist.is_main:
        _log_samples(trainer, out / "samples.jsonl", batch.prompts, batch.completions, batch.scores)
    return stats, position


def _fill_informative(trainer, position: DataPosition, prompts: list, token_ids: list, reward: Callable,
                      params: SamplingParams) -> tuple[_Batch | None, DataPosition, float, float, dict]:
    """DAPO's dynamic sampling [DAPO]: draw global batches (each rank its slice, in data order) and keep
    the groups whose shaped scores are not all equal, until every rank has ``batch_size`` rows of them
    or ``max_sampling_rounds`` batches were drawn; then each rank trains on its first informative groups,
    topped up with uninformative ones (left out of the loss by the learner) if it is short.

    Returns ``(batch, position after the draws, generation s, reward s, stats)``; the batch is None when
    non-finite scores skip the iteration. Every rank draws the same number of batches, so the data
    position stays global and a resumed run continues exactly.
    """
    cfg, k = trainer.config, trainer.config.num_generations
    bs = cfg.batch_size // k  # groups per rank
    global_bs = bs * trainer.dist.world_size
    informative: list[_Batch] = []
    spare: list[_Batch] = []
    have = rounds = 0
    t_gen = t_reward = 0.0
    while True:
        position = _with_order(trainer, position, len(prompts))
        batch, g, r = _draw(trainer, position, prompts, token_ids, reward, params)
        t_gen, t_reward, rounds = t_gen + g, t_reward + r, rounds + 1
        if batch is None:  # non-finite scores: the iteration is skipped (its draws are used up)
            return None, position.advanced(global_bs, len(prompts)), t_gen, t_reward, {}
        shaped = shape_scores(cfg, batch.scores, batch.rollout.ended, batch.rollout.response_mask.sum(1))
        keep = informative_groups(shaped, k).tolist()
        kept = [g for g, ok in enumerate(keep) if ok]
        if kept and have < bs:
            informative.append(batch.groups(kept[: bs - have], k))
            have += min(len(kept), bs - have)
        if have < bs:
            spare.append(batch.groups([g for g, ok in enumerate(keep) if not ok], k))
        full = have >= bs
        last = not trainer.dist.any(not full) or rounds >= cfg.max_sampling_rounds
        position = position.advanced(global_bs, len(prompts), iteration_done=last)
        if last:
            break
    counts = trainer.dist.sum(torch.tensor([float(have), float(bs * rounds)], device=trainer.device)).tolist()
    if counts[0] < global_bs and trainer.dist.is_main:
        logger.warning("dynamic sampling: after %d batches (max_sampling_rounds) %d of %d groups have scores that "
                       "differ; the iteration trains on those (raise max_sampling_rounds, or check the reward: "
                       "equal scores in a group carry no gradient)", rounds, int(counts[0]), global_bs)
    parts = informative + [part.groups(list(range(len(part.prompts) // k)), k) for part in spare]
    rows = _concat_batches(parts, trainer.tokenizer.pad_token_id)
    chosen = rows.groups(list(range(bs)), k)  # informative groups first, then spare ones to fill the batch
    stats = {"dynamic_sampling/rounds": float(rounds),
             "dynamic_sampling/informative_frac": counts[0] / counts[1] if rounds else 0.0}
    return chosen, position, t_gen, t_reward, stats


def _concat_batches(parts: list[_Batch], pad_id: int) -> _Batch:
    parts = [p for p in parts if p.prompts]
    return _Batch([x for p in parts for x in p.prompts], concat_rollouts([p.rollout for p in parts], pad_id),
                  [x for p in parts for x in p.completions], torch.cat([p.scores for p in parts]))


def _resume(trainer, resume: str | Path, out: Path | None, expected: DataPosition, global_bs: int) -> DataPosition:
    """Load the checkpoint ``resume`` names; check it was written for these prompts; drop log rows after it."""
    if str(resume) == "latest":
        if out is None:
            raise ValueError("resume='latest' needs output_dir (the run directory to look in)")
        path = latest_checkpoint(out / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"resume: no checkpoint under {out / 'checkpoints'}")
    else:
        path = Path(resume)
    position = trainer.load_checkpoint(path)
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
    if out is not None and trainer.dist.is_main:
        dropped = truncate_jsonl(out / "metrics.jsonl", "step", trainer.iteration)
        dropped += truncate_jsonl(out / "samples.jsonl", "iteration", trainer.iteration)
        if dropped:
            logger.info("removed %d log rows written after iteration %d", dropped, trainer.iteration)
    logger.info("resumed from %s: iteration %d, epoch %d, prompt %d", path, trainer.iteration, position.epoch,
                position.offset)
    return position

def _save_run_checkpoint(trainer, out: Path, keep: int) -> Path:
    """``out/checkpoints/step-N`` for the current iteration, keeping the newest ``keep`` (0: all)."""
    path = trainer.save_checkpoint(out / "checkpoints" / checkpoint_name(trainer.iteration))
    if trainer.dist.is_main:
        for old in prune_checkpoints(out / "checkpoints", keep):
            logger.debug("removed old checkpoint %s", old)
        logger.info("checkpoint %s", path)
    return path


def _log_samples(trainer, path: Path, prompts, completions, scores) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for p, c, s in zip(prompts[:4], completions[:4], scores[:4].tolist()):
            handle.write(json.dumps({"iteration": trainer.iteration, "prompt": p, "completion": c,
                                     "score": s}) + "\n")


def show_progress(progress: bool | None) -> bool:
    """Progress bars: as asked, else only on an interactive terminal outside CI."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


__all__ = ["show_progress", "train_on_dataset"]
