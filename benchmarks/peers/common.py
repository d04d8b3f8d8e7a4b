"""Shared by every benchmark worker (tether's and the TRL peers'); stdlib + torch + transformers only,
so it runs unchanged in each peer's virtual environment."""

import json
import resource
import sys
import time

import torch


def load_job(path):
    with open(path) as handle:
        return json.load(handle)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def score(reward_model, pad_id, sequences):
    """Reward-model logit at the last token of each (prompt + response) id list (right-padded).

    The last token is located from the lengths, not from ``pad_token_id``: transformers 4.46 pools a
    sequence classifier at the token before the *first* pad id, and SmolLM2's pad id (= EOS) already
    occurs inside the chat-rendered prompt, which would give every row the same score in that venv."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    hidden = reward_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(sequences)), mask.sum(1) - 1]
    return [float(x) for x in reward_model.score(last)[:, 0]]


def rule_scores(tokenizer, responses):
    """The seed program's rule reward, ``1 - len(r) / 200`` on the decoded response text (shorter is better)."""
    return [1 - len(tokenizer.decode(r, skip_special_tokens=True)) / 200 for r in responses]


def job_scores(job, tokenizer, reward_model, batch, responses):
    """Each response's score: the rule (``job["reward"] == "rule"``) or the reward model's."""
    if job.get("reward", "model") == "rule":
        return rule_scores(tokenizer, [r.tolist() for r in responses])
    return score(reward_model, tokenizer.pad_token_id, [q + r.tolist() for q, r in zip(batch, responses)])


def report(result, path):
    result.setdefault("peak_rss_mib", peak_rss_mib())
    with open(path, "w") as handle:
        json.dump(result, handle)
    print(json.dumps({k: v for k, v in result.items() if k != "rewards"}), file=sys.stderr)


class Clock:
    def __init__(self):
        self.marks = [time.perf_counter()]

    def lap(self) -> float:
        self.marks.append(time.perf_counter())
        return self.marks[-1] - self.marks[-2]
