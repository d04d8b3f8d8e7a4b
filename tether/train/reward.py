"""RewardTrainer: a sequence-classification reward model from preference pairs (Bradley–Terry).

One optimiser step per ``batch_size`` pairs: chosen and rejected sequences of the batch go through
the model in one forward (``2·B`` rows), the loss is ``mean(−log σ(r_c − r_r − margin))``
(``tether.algo.bradley_terry_loss``). Held-out pair accuracy and the mean reward gap are measured
after every epoch. ``save_pretrained`` writes an HF directory that
``AutoModelForSequenceClassification.from_pretrained`` loads, plus the score normalisation that
``RewardModelScorer`` applies.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..algo import bradley_terry_loss
from ..config import RewardConfig, to_dict
from ..data.preferences import PreferencePair, load_preferences
from ..rewards.model import RewardModelScorer, encode_pairs, prompt_text, save_normalization
from ..tracking.checkpoint import write_atomically, write_json
from ..tracking.model_card import write_model_card
from ..tracking.sinks import make_sinks
from .optim import make_scheduler
from .precision import Precision

logger = logging.getLogger(__name__)


class RewardTrainer:
    """Train ``model`` (``AutoModelForSequenceClassification``, ``num_labels=1``) on preference pairs.

    train_dataset / eval_dataset: anything ``load_preferences`` reads (JSONL path, ``datasets``
    object or directory, list of dicts or ``PreferencePair``). ``tokenizer`` is the reward model's
    own; prompt and completion are encoded as a text pair (``encode_pairs``). ``log_dir`` gets
    ``metrics.jsonl`` (one row per epoch), plus the ``report_to`` sinks (tensorboard, wandb, mlflow).
    """

    def __init__(self, config: RewardConfig, model, tokenizer, train_dataset: Any,
                 eval_dataset: Any = None, log_dir: str | Path | None = None, report_to: Sequence[str] = ()):
        if model.config.num_labels != 1:
            raise ValueError(f"reward model has num_labels={model.config.num_labels}; expected 1 "
                             "(load it with tether.models.loading.load_reward_backbone)")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("reward tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.train_pairs = load_preferences(train_dataset)
        self.eval_pairs = load_preferences(eval_dataset) if eval_dataset is not None else []
        self._warn_over_long(self.train_pairs, "training")
        self.device = next(model.parameters()).device
        self.precision = Precision.resolve(config.precision, self.device)
        self.precision.prepare(model)
        logger.info("reward model: %s", self.precision.describe())
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                           lr=config.learning_rate, weight_decay=config.weight_decay)
        steps = config.epochs * math.ceil(len(self.train_pairs) / config.batch_size)
        self.total_steps = steps
        self.scheduler = make_scheduler(self.optimizer, "linear", int(config.warmup_ratio * steps), steps)
        self.sink = make_sinks(log_dir, report_to, to_dict(config)) if log_dir else None
        self.shift, self.scale = 0.0, 1.0
        self.step_count = 0

    # ------------------------------------------------------------------ training

    def train(self, progress: bool | None = None) -> list[dict[str, float]]:
        """All epochs; returns one stats dict per epoch (train loss/accuracy, eval accuracy/gap)."""
        from tqdm.auto import tqdm

        from .loop import show_progress

        cfg = self.config
        history = []
        bar = tqdm(total=self.total_steps, desc="reward model", unit="step", disable=not show_progress(progress))
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            self.model.train()
            totals = {"loss": 0.0, "correct": 0.0, "gap": 0.0}
            order = torch.randperm(len(self.train_pairs), generator=self.generator).tolist()
            for begin in range(0, len(order), cfg.batch_size):
                batch = [self.train_pairs[i] for i in order[begin : begin + cfg.batch_size]]
                stats = self._train_step(batch)
                for k in totals:
                    totals[k] += stats[k]
                bar.set_postfix_str(f"loss {stats['loss'] / len(batch):.3f}")
                bar.update(1)
            n = len(self.train_pairs)
            row = {"train/loss": totals["loss"] / n, "train/accuracy": totals["correct"] / n,
                   "train/reward_gap": totals["gap"] / n, "time/epoch": time.perf_counter() - start}
            if self.eval_pairs:
                row.update(self.evaluate())
            history.append(row)
            if self.sink is not None:
                self.sink.log(epoch + 1, row)
            if bar.disable:
                logger.info("reward model epoch %d/%d %s", epoch + 1, cfg.epochs, " ".join(f"{k}={v:.3g}" for k, v in row.items()))
        bar.close()
        self.model.eval()
        return history

    def _train_step(self, batch: Sequence[PreferencePair]) -> dict[str, float]:
        chosen, rejected = self._rewards(batch)
        margin = None
        if self.config.use_margin and any(p.margin for p in batch):
            margin = torch.tensor([p.margin for p in batch], dtype=chosen.dtype, device=self.device)
        loss, stats = bradley_terry_loss(chosen, rejected, margin)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"reward-model loss is {loss.item()} at step {self.step_count + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return {k: v.item() for k, v in stats.items()}

    def _rewards(self, batch: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B]`` logits of the chosen and of the rejected completions, from one forward."""
        prompts = [p.prompt for p in batch] * 2
        completions = [p.chosen for p in batch] + [p.rejected for p in batch]
        enc = encode_pairs(self.tokenizer, prompts, completions, self.config.max_length).to(self.device)
        with self.precision.autocast():
            logits = self.model(**enc).logits[:, 0].float()
        return logits[: len(batch)], logits[len(batch) :]

    # ------------------------------------------------------------------ evaluation and scoring

    @torch.no_grad()
    def evaluate(self, pairs: Any = None, batch_size: int = 32) -> dict[str, float]:
        """Held-out ``eval/accuracy`` (share of pairs ranked right; ties ½), ``eval/reward_gap``
        (mean r_c − r_r, in logits) and ``eval/loss`` on ``pairs`` (default: the eval set)."""
        pairs = load_preferences(pairs) if pairs is not None else self.eval_pairs
        if not pairs:
            raise ValueError("evaluate: no evaluation pairs (pass eval_dataset= or pairs)")
        was_training = self.model.training
        self.model.eval()
        totals = {"loss": 0.0, "correct": 0.0, "gap": 0.0}
        for begin in range(0, len(pairs), batch_size):
            chosen, rejected = self._rewards(pairs[begin : begin + batch_size])
            _, stats = bradley_terry_loss(chosen, rejected)
            for k in totals:
                totals[k] += stats[k].item()
        self.model.train(was_training)
        n = len(pairs)
        return {"eval/accuracy": totals["correct"] / n, "eval/reward_gap": totals["gap"] / n,
                "eval/loss": totals["loss"] / n, "eval/pairs": float(n)}

    def score(self, prompts: Sequence[Any], completions: Sequence[str], batch_size: int = 32) -> list[float]:
        """Raw logits (no normalisation) of (prompt, completion) pairs, scored as PPO will score them."""
        was_training = self.model.training
        scorer = RewardModelScorer(self.model, self.tokenizer, self.config.max_length, batch_size)
        try:
            return scorer(prompts, completions)
        finally:
            self.model.train(was_training)

    def fit_normalization(self, prompts: Sequence[Any] | None = None,
                          completions: Sequence[str] | None = None) -> tuple[float, float]:
        """Set ``shift, scale`` = mean and std of the raw scores of ``completions`` — the reference
        policy's samples, so that PPO starts from rewards of mean 0 and std 1 — or, when none are
        given, of every completion in the training pairs. Returns ``(shift, scale)``."""
        if completions is None:
            prompts = [p.prompt for p in self.train_pairs] * 2
            completions = [p.chosen for p in self.train_pairs] + [p.rejected for p in self.train_pairs]
        if prompts is None or len(prompts) != len(completions) or len(completions) < 2:
            raise ValueError("fit_normalization needs at least 2 completions and one prompt per completion")
        scores = torch.tensor(self.score(prompts, completions))
        self.shift, self.scale = scores.mean().item(), max(scores.std().item(), 1e-6)
        return self.shift, self.scale

    def save_pretrained(self, directory: str | Path, info: dict | None = None) -> Path:
        """Write model, tokenizer, normalisation and the training config atomically."""

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_normalization(tmp, self.shift, self.scale)
            write_json(tmp / "tether_reward_config.json", {"config": to_dict(self.config), **(info or {})})
            write_model_card(tmp, "reward_model", base_model=getattr(self.model, "name_or_path", None),
                             config=to_dict(self.config), metrics=info, final_path=directory)

        return write_atomically(directory, write)

    # ------------------------------------------------------------------ input checks

    def _warn_over_long(self, pairs: Sequence[PreferencePair], name: str) -> None:
        """Warn (with a count and the first pair) when pairs will be truncated to max_length."""
        if not pairs:
            return
        count = lambda texts: [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
        prompt_lens = count([prompt_text(p.prompt) for p in pairs])
        chosen_lens, rejected_lens = count([p.chosen for p in pairs]), count([p.rejected for p in pairs])
        room = self.config.max_length - 3  # [CLS]/[SEP]-style specials
        over = [i for i, (p, c, r) in enumerate(zip(prompt_lens, chosen_lens, rejected_lens)) if p + max(c, r) > room]
        if over:
            first = pairs[over[0]].where or f"pair {over[0]}"
            logger.warning("%d %s pair(s) exceed max_length=%d tokens and are truncated (the start of the prompt first); "
                           "first: %s", len(over), name, self.config.max_length, first)


__all__ = ["RewardTrainer"]
