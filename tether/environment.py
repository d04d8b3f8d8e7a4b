"""Tool-using episodes for PPO: TRL 0.11's ``TextEnvironment`` and ``TextHistory`` and their protocol.

The model writes ``<request><ToolName>query<call>``; the environment runs ``tools["ToolName"](query)``
and appends ``result<response>``; the model goes on until it writes ``<submit>``, EOS, a turn without a
tool call, ``max_turns`` turns or ``max_length`` tokens. ``run(tasks)`` returns what ``step`` takes:

    queries, responses, masks, rewards, histories = env.run(tasks, **reward_kwargs)
    trainer.step(queries, responses, rewards, masks)   # masks: 1 on the model's tokens, 0 on the tools'

so the loss, KL and values cover only the tokens the model wrote (tether's GAE carries values over the
tools' tokens inside a response).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

REQUEST, CALL, RESPONSE, SUBMIT = "<request>", "<call>", "<response>", "<submit>"


class TextHistory:
    """One episode: its text and tokens as segments, each the system's (prompt, tool output: mask 0)
    or the model's (mask 1). ``tokens``, ``token_masks``: ``[N]`` long; ``text_spans`` and
    ``token_spans``: ``(start, end)`` per segment; ``reward``, ``completed``, ``truncated``."""

    def __init__(self, text: str, tokens: torch.Tensor, system: bool = True):
        self.system_spans: list[bool] = []
        self.text_spans: list[tuple[int, int]] = []
        self.token_spans: list[tuple[int, int]] = []
        self.text = ""
        self.tokens = torch.tensor([], dtype=torch.long, device=tokens.device)
        self.token_masks = torch.tensor([], dtype=torch.long, device=tokens.device)
        self.completed = self.truncated = False
        self.reward: Any = 0.0
        self.append_segment(text, tokens, system=system)

    def append_segment(self, text: str, tokens: torch.Tensor, system: bool = True) -> None:
        if len(text) == 0 or len(tokens) == 0:
            raise ValueError("Can't append empty text or token list to history.")
        self.text_spans.append((len(self.text), len(self.text) + len(text)))
        self.text += text
        self.system_spans.append(system)
        self.token_spans.append((len(self.tokens), len(self.tokens) + len(tokens)))
        self.tokens = torch.cat((self.tokens, tokens.to(self.tokens.device).long()))
        mask = torch.zeros_like(tokens) if system else torch.ones_like(tokens)
        self.token_masks = torch.cat((self.token_masks, mask.to(self.token_masks.device).long()))

    def complete(self, truncated: bool = False) -> None:
        self.completed, self.truncated = True, truncated

    @property
    def last_text_segment(self) -> str:
        start, end = self.text_spans[-1]
        return self.text[start:end]

    def split_query_response_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(query, response, mask)``: the first segment, everything after it, and its mask."""
        split = self.token_spans[0][1]
        return self.tokens[:split], self.tokens[split:], self.token_masks[split:]

    def show_text(self, show_legend: bool = False) -> None:
        """Print the episode, each segment marked as prompt, system or model, and its reward."""
        labels = ["prompt"] + ["system" if s else "model" for s in self.system_spans[1:]]
        for label, (start, end) in zip(labels, self.text_spans):
            print(f"[{label}] {self.text[start:end]}")
        print(f"[reward] {self.reward}")

    def show_tokens(self, tokenizer, show_legend: bool = False) -> None:
        """Print the tokens with the mask each carries (1: trained on)."""
        pieces = tokenizer.convert_ids_to_tokens(self.tokens.tolist())
        print(" ".join(f"{p}/{int(m)}" for p, m in zip(pieces, self.token_masks.tolist())))
        print(f"[reward] {self.reward}")


class TextEnvironment:
    """``TextEnvironment(model, tokenizer, tools, reward_fn, prompt, max_turns=4, max_tool_reponse=100,
    max_length=None, generation_kwargs=None)``.

    model: the policy (a value-head wrapper or a causal LM with ``generate``); tools: ``{name: callable}``
    or a list of tool objects (named by class); reward_fn: ``(last segments, **reward_kwargs) -> rewards``;
    prompt: prepended to every task; max_tool_reponse: characters of a tool's answer kept (TRL's
    spelling); max_length: tokens of an episode; generation_kwargs: passed to ``model.generate``."""

    def __init__(self, model=None, tokenizer=None, tools=None, reward_fn: Callable | None = None, prompt: str = "",
                 max_turns: int = 4, max_tool_reponse: int = 100, max_length: int | None = None,
                 generation_kwargs: dict | None = None):
        self.model, self.tokenizer, self.prompt, self.reward_fn = model, tokenizer, prompt or "", reward_fn
        self.tools = dict(tools) if isinstance(tools, dict) else {type(t).__name__: t for t in tools or []}
        self.max_turns, self.max_tool_response, self.max_length = max_turns, max_tool_reponse, max_length
        self.generation_kwargs = dict(generation_kwargs or {})
        self.request_token, self.call_token, self.response_token, self.submit_token = REQUEST, CALL, RESPONSE, SUBMIT
        inner = getattr(model, "pretrained_model", model)
        self.is_encoder_decoder = bool(getattr(getattr(inner, "config", None), "is_encoder_decoder", False))
        if self.is_encoder_decoder:
            raise ValueError("TextEnvironment: tool episodes continue one token sequence; give a causal LM")
        self.current_device = next(inner.parameters()).device

    def run(self, queries: list[str], **rewards_kwargs):
        """Play every task to its end; returns ``(queries, responses, masks, rewards, histories)``."""
        histories = [TextHistory(text, self._encode(text), system=True) for text in (self.prompt + q for q in queries)]
        for _ in range(self.max_turns):
            if all(h.completed for h in histories):
                break
            self.generate(histories)
            self.tasks_end_check(histories)
            for history in histories:
                self.step(history)
            self.tasks_end_check(histories, model_turn=False)
        self.compute_reward(histories, **rewards_kwargs)
        queries, responses, masks = map(list, zip(*[h.split_query_response_tokens() for h in histories]))
        return queries, responses, masks, [h.reward for h in histories], histories

    def step(self, history: TextHistory) -> TextHistory:
        """Run the tool the model's last segment calls and append its answer (a system segment)."""
        truncated, ended = self.task_end_check(history)
        if ended:
            history.complete(truncated=truncated)
        if history.completed:
            return history
        tool, query = self.parse_tool_call(history.last_text_segment)
        if tool is None or query is None:
            response = f"Unknown tool call: {history.last_text_segment}"
        elif tool not in self.tools:
            response = f"Unknown tool {tool}."
        else:
            try:
                response = str(self.tools[tool](query))
            except Exception as error:  # noqa: BLE001 - a tool's failure is the episode's, reported to the model
                response = f"Tool error: {error}"
        if len(response) > self.max_tool_response:
            response = response[: self.max_tool_response - 3] + "..."
        history.append_segment(response + self.response_token, self._encode(response + self.response_token), system=True)
        return history

    def parse_tool_call(self, text: str) -> tuple[str | None, str | None]:
        """``<request><ToolName>query<call>`` -> ``(ToolName, query)``; ``(None, None)`` if malformed."""
        found = re.search(f"(?<={re.escape(self.request_token)}).*?(?={re.escape(self.call_token)})", text, re.DOTALL)
        if found is None:
            return None, None
        name = re.search(r"<(.*?)>", found.group())
        if name is None:
            return None, None
        return name.group(1), ">".join(found.group().split(">")[1:])

    def compute_reward(self, histories: list[TextHistory], **reward_kwargs) -> list[TextHistory]:
        rewards = self.reward_fn([h.last_text_segment for h in histories], **reward_kwargs)
        for history, reward in zip(histories, rewards):
            history.reward = reward
        return histories

    def generate(self, histories: list[TextHistory]) -> list[TextHistory]:
        """One model turn for every active episode (a model segment each), stopped at ``<call>`` or ``<submit>``."""
        active = [h for h in histories if not h.completed]
        for history, tokens in zip(active, self._generate_batched([h.tokens for h in active])):
            if len(tokens):
                history.append_segment(self.tokenizer.decode(tokens), tokens, system=False)
            else:
                history.complete()
        return histories

    def tasks_end_check(self, histories: list[TextHistory], model_turn: bool = True) -> list[TextHistory]:
        for history in histories:
            if not history.completed:
                truncated, ended = self.task_end_check(history, model_turn=model_turn)
                if ended:
                    history.complete(truncated=truncated)
        return histories

    def task_end_check(self, history: TextHistory, model_turn: bool = True) -> tuple[bool, bool]:
        """``(truncated, ended)``: too long; EOS written; after the model's turn, no tool call and no
        ``<submit>``; or ``<submit>`` written."""
        if history.completed:
            return False, False
        last = history.last_text_segment
        if self.max_length is not None and len(history.tokens) > self.max_length:
            return True, True
        if self.tokenizer.eos_token and self.tokenizer.eos_token in history.text:
            return False, True
        if model_turn and not ((self.request_token in last and self.call_token in last) or self.submit_token in last):
            return False, True
        return False, self.submit_token in last

    def _encode(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, return_tensors="pt").input_ids[0].to(self.current_device)

    @torch.no_grad()
    def _generate_batched(self, query_tensors: list[torch.Tensor], batch_size: int = 16) -> list[torch.Tensor]:
        """New tokens per query (left-padded batches), each cut after the first ``<call>``/``<submit>``."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        stops, tokenizer = (self.call_token, self.submit_token), self.tokenizer
        kwargs = dict(self.generation_kwargs)
        vocab = len(tokenizer)
        if kwargs.get("eos_token_id") is not None:  # an id outside the vocabulary (TRL programs pass -1): never stop
            given = kwargs["eos_token_id"] if isinstance(kwargs["eos_token_id"], (list, tuple)) else [kwargs["eos_token_id"]]
            kept = [int(t) for t in given if 0 <= int(t) < vocab]
            kwargs["eos_token_id"] = kept or None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        outputs = []
        for start in range(0, len(query_tensors), batch_size):
            batch = query_tensors[start : start + batch_size]
            width = max(len(q) for q in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long, device=self.current_device)
            mask = torch.zeros_like(ids)
            for i, q in enumerate(batch):
                ids[i, width - len(q) :], mask[i, width - len(q) :] = q, 1

            class StopStrings(StoppingCriteria):
                def __call__(self, input_ids, scores, **_):
                    texts = tokenizer.batch_decode(input_ids[:, width:])
                    return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

            out = self.model.generate(input_ids=ids, attention_mask=mask, **{"pad_token_id": pad, **kwargs},
                                      stopping_criteria=StoppingCriteriaList([StopStrings()]))
            eos = kwargs.get("eos_token_id", getattr(getattr(self.model, "config", None), "eos_token_id", None))
            eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
            for row in out[:, width:]:
                outputs.append(self._cut_after_stop(row, stops, eos))
        return outputs

    def _cut_after_stop(self, tokens: torch.Tensor, stops: tuple[str, ...], eos: set[int]) -> torch.Tensor:
        """``tokens`` up to and including the token that completes the first stop string, or the
        first EOS (what follows is padding); all of them if neither comes."""
        ends = [i + 1 for i, t in enumerate(tokens.tolist()) if t in eos][:1] or [len(tokens)]
        tokens = tokens[: ends[0]]
        if not any(s in self.tokenizer.decode(tokens) for s in stops):
            return tokens
        low, high = 1, len(tokens)  # containing a stop string is monotone in the prefix: bisect for the first
        while low < high:
            mid = (low + high) // 2
            if any(s in self.tokenizer.decode(tokens[:mid]) for s in stops):
                high = mid
            else:
                low = mid + 1
        return tokens[:low]


__all__ = ["TextEnvironment", "TextHistory"]
