"""Built-in rule rewards, selectable by name from a config (``reward.rule``).

Each rule is a plain function ``(prompts, completions, **args) -> list[float]``.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Callable, Sequence


POSITIVE_WORDS = (
    "beautiful", "wonderful", "amazing", "happy", "happiness", "joy", "joyful", "love", "lovely", "delightful",
    "great", "excellent", "fantastic", "vibrant", "bright", "warm", "peaceful", "exciting", "perfect", "best",
    "brilliant", "cheerful", "glad", "kind", "pleasant", "fun", "smile", "hope", "inspiring", "magical",
    "charming", "gorgeous", "incredible", "grateful", "thrilled", "enjoy", "enjoyable", "beauty", "serene",
    "stunning", "good", "calm", "cozy", "fresh", "sweet", "delight", "laughter", "bliss", "friendly", "gentle",
)


def keyword_reward(prompts: Sequence, completions: Sequence[str], words: Sequence[str] = POSITIVE_WORDS,
                   cap: int = 10) -> list[float]:
    """Number of occurrences of any of ``words`` (whole words, case-insensitive), capped at ``cap``.

    The default words are a small positive-sentiment lexicon: "write warmly" as a rule."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return [float(min(len(pattern.findall(c)), cap)) for c in completions]


def length_reward(prompts: Sequence, completions: Sequence[str], target_words: int = 20) -> list[float]:
    """``−|words − target| / target``: 0 at the target length, negative elsewhere."""
    return [-abs(len(c.split()) - target_words) / target_words for c in completions]


def exclamation_reward(prompts: Sequence, completions: Sequence[str], cap: int = 5) -> list[float]:
    """Number of '!' characters, capped at ``cap``: an easy-to-learn style reward."""
    return [float(min(c.count("!"), cap)) for c in completions]


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_reward(prompts: Sequence, completions: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each completion, in [−1, 1] (Hutto & Gilbert 2014, the
    ``vaderSentiment`` package): a lexicon-and-rules scorer with negation and intensifiers. The demo
    uses it as the *gold* annotator that labels preference pairs."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(c)["compound"]) for c in completions]


RULES: dict[str, Callable] = {
    "keyword": keyword_reward,
    "length": length_reward,
    "exclamation": exclamation_reward,
    "sentiment": sentiment_reward,
}


def make_rule(name: str, args: dict | None = None) -> Callable:
    """The rule ``name`` with its keyword ``args`` bound; the error lists the known rules."""
    if name not in RULES:
        raise ValueError(f"reward.rule: unknown rule {name!r}; known rules: {sorted(RULES)}")
    args = dict(args or {})
    params = {p.name: p for p in list(inspect.signature(RULES[name]).parameters.values())[2:]}
    for key, value in args.items():
        if key not in params:
            raise ValueError(f"reward.rule_args.{key}: rule {name!r} takes no argument {key!r}; "
                             f"its arguments: {sorted(params) or 'none'}")
        default = params[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"reward.rule_args.{key}: expected a positive number, got {value!r}")
        elif isinstance(default, (tuple, list)) and not (
                isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)):
            raise ValueError(f"reward.rule_args.{key}: expected a non-empty list of strings, got {value!r}")
    fn = functools.partial(RULES[name], **args)
    fn.__qualname__ = f"rule:{name}"  # type: ignore[attr-defined]
    return fn
