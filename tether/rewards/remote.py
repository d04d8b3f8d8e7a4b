"""A reward served over HTTP: timeouts, retries with backoff, and nothing sent but the text.

Protocol (any server that speaks it works, e.g. a FastAPI endpoint around a large reward model)::

    POST <url>   {"prompts": [...], "completions": ["...", ...]}
    200          {"scores": [0.3, -1.2, ...]}          (or a bare JSON list of numbers)

A prompt is a string or a list of ``{"role", "content"}`` messages; other keys of the messages are
stripped, so only prompt and completion text leave the process. A bearer token, when needed, comes
from an environment variable (never from a config file that is saved with the run).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from .base import Prompt, RewardError

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_sleep = time.sleep  # the backoff wait (tests replace it)


def text_only(prompt: Prompt) -> Any:
    """A prompt reduced to its text: strings as they are, messages as ``{"role", "content"}`` only."""
    if isinstance(prompt, str):
        return prompt
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


class RemoteReward:
    """``RewardFn`` that POSTs batches to an HTTP reward server.

    Args:
        url: http(s) endpoint.
        timeout: seconds per request (connect + read).
        retries: extra attempts after a connection error, a timeout, or HTTP 408/425/429/5xx; other
            HTTP errors (a 4xx: the request itself is wrong) fail at once.
        backoff: seconds before the first retry, doubled each time (capped at 60 s).
        batch_size: rows per request (None: the whole batch in one request).
        token_env: environment variable holding a bearer token (sent only when it is set).
    """

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
                 batch_size: int | None = None, token_env: str = "TETHER_REWARD_TOKEN"):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward.url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("reward server: timeout must be > 0, retries and backoff >= 0")
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.batch_size, self.token_env = batch_size, token_env
        self.__qualname__ = f"RemoteReward({url})"  # how reward errors name this function

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        step = self.batch_size or max(1, len(completions))
        scores: list[float] = []
        for start in range(0, len(completions), step):
            scores += self._request([text_only(p) for p in prompts[start : start + step]],
                                    [str(c) for c in completions[start : start + step]])
        return scores

    def _request(self, prompts: list, completions: list[str]) -> list[float]:
        body = json.dumps({"prompts": prompts, "completions": completions}).encode()
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(self.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(60.0, self.backoff * 2 ** (attempt - 1))
                logger.warning("reward server %s: %s; retry %d/%d in %.1f s", self.url, last, attempt,
                               self.retries, delay)
                _sleep(delay)
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._parse(response.read(), len(completions))
            except urllib.error.HTTPError as err:
                detail = err.read()[:200].decode("utf-8", "replace")
                if err.code not in RETRY_STATUS:
                    raise RewardError(f"reward server {self.url} answered HTTP {err.code}: {detail}") from None
                last = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"timed out after {self.timeout} s" if isinstance(reason, TimeoutError) or \
                    "timed out" in str(reason) else f"{type(reason).__name__}: {reason}"
        raise RewardError(f"reward server {self.url}: {last} ({self.retries + 1} attempts)")

    def _parse(self, raw: bytes, expected: int) -> list[float]:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RewardError(f"reward server {self.url} sent invalid JSON: {raw[:200]!r}") from None
        scores = data.get("scores") if isinstance(data, dict) else data
        if not isinstance(scores, list):
            raise RewardError(f"reward server {self.url}: expected {{\"scores\": [...]}} or a list, got {raw[:200]!r}")
        if len(scores) != expected:
            raise RewardError(f"reward server {self.url} returned {len(scores)} scores for {expected} completions")
        return scores
