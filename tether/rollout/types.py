"""The data that flows through one PPO iteration, with shapes.

B = number of sequences, P = padded prompt length, T = padded response length.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Rollout:
    """Sampled (or user-given) prompt/response token ids with their masks."""

    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] bool, True on real prompt tokens
    response_ids: torch.Tensor  # [B, T] long, right-padded (pad id after the first EOS/stop)
    response_mask: torch.Tensor  # [B, T] bool, True up to and including the first EOS/stop token
    ended: torch.Tensor  # [B] bool, True when the response ended with EOS/stop (not truncated)
    # the temperature the responses were sampled at, so scoring divides the logits by the same one;
    # None: not sampled here (user-given responses), scored at the configured temperature
    temperature: float | None = None
    # [B, T] bool: the response tokens that carry loss, KL and value, when not all of response_mask
    # do (TRL's response_masks: e.g. a tool's output inside a response). None: response_mask
    loss_mask: torch.Tensor | None = None
    # [B, T] float: the engine's log-probabilities of the sampled tokens at ``temperature``, 0 outside
    # response_mask, when the engine is not the trainer's own model (vLLM). The trainer recomputes its
    # old logprobs anyway; these measure how far the engine is from it (and weight the loss under TIS)
    sample_logprobs: torch.Tensor | None = None

    def __post_init__(self):
        b, p = self.prompt_ids.shape
        if self.prompt_mask.shape != (b, p):
            raise ValueError(f"prompt_mask {tuple(self.prompt_mask.shape)} != prompt_ids {(b, p)}")
        if self.response_ids.shape[0] != b or self.response_mask.shape != self.response_ids.shape:
            raise ValueError(
                f"response_ids {tuple(self.response_ids.shape)} / response_mask "
                f"{tuple(self.response_mask.shape)} do not match {b} prompts"
            )
        if (self.response_mask.sum(1) == 0).any():
            rows = (self.response_mask.sum(1) == 0).nonzero().flatten().tolist()
            raise ValueError(f"responses {rows} are empty: every response needs at least one token")
        if self.loss_mask is not None:
            if self.loss_mask.shape != self.response_mask.shape:
                raise ValueError(f"loss_mask {tuple(self.loss_mask.shape)} != response_mask "
                                 f"{tuple(self.response_mask.shape)}")
            self.loss_mask = self.loss_mask.bool() & self.response_mask
            if (self.loss_mask.sum(1) == 0).any():
                rows = (self.loss_mask.sum(1) == 0).nonzero().flatten().tolist()
                raise ValueError(f"response_masks of rows {rows} select no token: every row needs one to train on")
        if self.sample_logprobs is not None and self.sample_logprobs.shape != self.response_mask.shape:
            raise ValueError(f"sample_logprobs {tuple(self.sample_logprobs.shape)} != response_mask "
                             f"{tuple(self.response_mask.shape)}")

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows ``index`` (``[b]`` long) of every per-row field."""
        optional = {name: getattr(self, name)[index] if getattr(self, name) is not None else None
                    for name in ("loss_mask", "sample_logprobs")}
        return Rollout(self.prompt_ids[index], self.prompt_mask[index], self.response_ids[index],
                       self.response_mask[index], self.ended[index], self.temperature, **optional)

    @property
    def action_mask(self) -> torch.Tensor:
        """``[B, T]`` bool: the tokens that carry loss, KL and value (``loss_mask`` or ``response_mask``)."""
        return self.response_mask if self.loss_mask is None else self.loss_mask

    @property
    def input_ids(self) -> torch.Tensor:
        """``[B, P + T]`` prompt followed by response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[B, P + T]`` long mask: real prompt tokens and valid response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1).long()


def concat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """The rows of several rollouts in order, as one: prompts left-padded and responses right-padded
    (with ``pad_id``, masks False) to the longest of each. All must share a temperature and carry the
    same optional fields."""
    if not rollouts:
        raise ValueError("concat_rollouts: nothing to concatenate")
    temperatures = {r.temperature for r in rollouts}
    if len(temperatures) > 1:
        raise ValueError(f"concat_rollouts: rollouts sampled at different temperatures {sorted(temperatures)}")
    P = max(r.prompt_ids.shape[1] for r in rollouts)
    T = max(r.response_ids.shape[1] for r in rollouts)

    def left(x, width, value):
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, width, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    optional = {}
    for name in ("loss_mask", "sample_logprobs"):
        present = [getattr(r, name) is not None for r in rollouts]
        if any(present) and not all(present):
            raise ValueError(f"concat_rollouts: {name} is set on some rollouts and not others")
        optional[name] = torch.cat([right(getattr(r, name), T, 0) for r in rollouts]) if all(present) else None
    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, P, pad_id) for r in rollouts]),
        prompt_mask=torch.cat([left(r.prompt_mask, P, False) for r in rollouts]),
        response_ids=torch.cat([right(r.response_ids, T, pad_id) for r in rollouts]),
        response_mask=torch.cat([right(r.response_mask, T, False) for r in rollouts]),
        ended=torch.cat([r.ended for r in rollouts]),
        temperature=rollouts[0].temperature,
        **optional,
    )


@dataclass
class Experience:
    """A rollout scored once before the PPO epochs (dropout off, no grad)."""

    input_ids: torch.Tensor  # [B, P + T] prompt + response
    attention_mask: torch.Tensor  # [B, P + T] long
    response_mask: torch.Tensor  # [B, T] bool
    logprobs: torch.Tensor  # [B, T] log π_old(a_t|s_t), at the sampling temperature
    ref_logprobs: torch.Tensor  # [B, T] log π_ref(a_t|s_t), same temperature
    values: torch.Tensor  # [B, T] V_old(s_t), 0 where masked
    advantages: torch.Tensor  # [B, T] whitened GAE advantages, 0 where masked
    returns: torch.Tensor  # [B, T] A + V (unwhitened), 0 where masked
    temperature: float = 1.0  # the logits of every forward on these rows are divided by it
    # [B, T] truncated importance weights min(π_old / π_engine, C) of the policy loss (TIS), 0 where
    # masked; None: no correction (the HF engine samples from the trained model itself)
    is_weights: torch.Tensor | None = None

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "temperature" and getattr(self, f.name) is not None]

    def select(self, index: torch.Tensor) -> Experience:
        """The rows ``index`` (``[b]`` long) of every tensor field."""
        return Experience(**{name: getattr(self, name)[index] for name in self._tensor_fields()},
                          temperature=self.temperature)

    def trimmed(self, multiple: int = 1) -> Experience:
        """The same rows without the columns that are padding in every row: leading prompt columns
        and trailing response columns (``[b, P' + T']``, per-token fields ``[b, T']``), widened back with
        padding columns to a multiple of ``multiple`` (see ``trim_padding_columns``; ``T'`` may then exceed
        ``T``: per-token fields are zero-padded, ``response_mask`` with False).

        Exact: left padding is masked out of attention and position ids count real tokens only;
        trailing columns come after every valid token, so causal attention never sees them.
        """
        input_ids, attention_mask, length = trim_padding_columns(self.input_ids, self.attention_mask,
                                                                 self.response_mask, multiple)
        per_token = {name: fit_columns(getattr(self, name), length) for name in self._tensor_fields()
                     if name not in ("input_ids", "attention_mask")}
        return Experience(input_ids=input_ids, attention_mask=attention_mask, temperature=self.temperature,
                          **per_token)

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]


def padding_bounds(attention_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """``(start, length)``: the first column of ``attention_mask`` (``[b, P + T]``) holding a real
    token in some row, and the response length ``T' <= T`` up to the last valid token of any row of
    ``response_mask`` (``[b, T]``). Slicing ``[:, start : P + T']`` drops only all-padding columns."""
    prompt_len = attention_mask.shape[1] - response_mask.shape[1]
    real_prompt = attention_mask[:, :prompt_len].bool().any(0)
    start = int(real_prompt.nonzero()[0]) if real_prompt.any() else prompt_len
    start = min(start, max(prompt_len - 1, 0))  # the last prompt column scores the first response token
    valid = response_mask.any(0).nonzero()
    length = int(valid[-1]) + 1 if valid.numel() else 1
    return start, length


def trim_padding_columns(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                         multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``input_ids`` and ``attention_mask`` (``[b, P + T]``) without their all-padding columns
    (``[b, P' + T']``, see ``padding_bounds``), and the kept response length ``T'``.

    ``multiple > 1``: the width ``P' + T'`` is then rounded up to a multiple of ``multiple`` with padding
    columns — trailing response columns first, then leading prompt columns, then new trailing columns
    (id 0, mask 0; ``T'`` may exceed ``T``). A run then meets a few widths instead of one per micro-batch:
    kernels and their caches (oneDNN keeps a primitive, and memory, per shape) are reused, and the heap is
    not fragmented by buffers whose size changes every micro-batch. Exact for the same reasons as trimming.
    """
    start, length = padding_bounds(attention_mask, response_mask)
    prompt_len, response_len = attention_mask.shape[1] - response_mask.shape[1], response_mask.shape[1]
    appended = 0
    if multiple > 1:
        extra = -(prompt_len - start + length) % multiple
        grow = min(extra, response_len - length)  # trailing columns that exist
        length, extra = length + grow, extra - grow
        take = min(extra, start)  # leading prompt columns that exist
        start, appended = start - take, extra - take
    end = input_ids.shape[1] - (response_len - length)
    input_ids, attention_mask = input_ids[:, start:end], attention_mask[:, start:end]
    if appended:
        input_ids = torch.nn.functional.pad(input_ids, (0, appended), value=0)
        attention_mask = torch.nn.functional.pad(attention_mask, (0, appended), value=0)
        length += appended
    return input_ids, attention_mask, length


def fit_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` (``[b, n, ...]``) cut or zero-padded (False for bool) to ``[b, width, ...]`` on its second axis."""
    if width <= x.shape[1]:
        return x[:, :width]
    return torch.cat([x, x.new_zeros((x.shape[0], width - x.shape[1], *x.shape[2:]))], dim=1)
