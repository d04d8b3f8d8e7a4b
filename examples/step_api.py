"""The TRL-style step API on the offline SmolLM2-135M-Instruct: generate -> your reward -> step.

The loop in ``main`` is the seed program of the old TRL PPOTrainer, unchanged but for the import
line and the model. Rewards (``--reward``):
  length   the seed's own ``len(r)`` (characters);
  brevity  ``1 - len(r) / 200``: shorter answers (the prompts ask for one or two sentences; 50 tokens
           are about 200 characters, so the score is near 0 on average and needs no baseline);
  keyword  warm, positive words (tether.rewards.rules.keyword_reward).

Around the loop, and outside its time budget, the same held-out prompts are answered before and
after training (``--heldout``, 2 samples each) and the mean rewards compared, with the standard
error of the difference: the per-iteration batch means (16 samples) are too noisy to show a change.

    .venv/bin/python examples/step_api.py --reward brevity       # 10 minutes of training on 2 cores
    .venv/bin/python examples/step_api.py --reward length --whiten-scores
    .venv/bin/python examples/step_api.py --model DIR --iterations 1 --batch-size 4   (any HF model)
"""

import argparse
import math
import statistics
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from tether import PPOConfig, PPOTrainer
from tether.assets import resolve_model
from tether.data import load_prompts
from tether.rewards.rules import keyword_reward

REWARDS = {
    "length": lambda prompts, responses: [len(r) for r in responses],
    "brevity": lambda prompts, responses: [1 - len(r) / 200 for r in responses],
    "keyword": keyword_reward,
}


def held_out_rewards(trainer, prompts, reward, max_new_tokens, samples=2) -> list[float]:
    """Rewards of ``samples`` fresh answers to each held-out prompt (no training step)."""
    prompts = [p for p in prompts for _ in range(samples)]
    responses = []
    for start in range(0, len(prompts), 32):
        responses += trainer.generate(prompts[start : start + 32], max_new_tokens=max_new_tokens)
    return [float(x) for x in reward(prompts, responses)]


def summary(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error."""
    return statistics.fmean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="HF id, local dir or packaged alias")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop starting new iterations after this")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--reward", choices=sorted(REWARDS), default="length")
    parser.add_argument("--seed", type=int, default=0, help="PPOConfig(seed=...): sampling and initialisation")
    parser.add_argument("--heldout", type=int, default=64, help="held-out prompts scored before and after (0: none)")
    parser.add_argument("--whiten-scores", action="store_true",
                        help="PPOConfig(whiten_scores=True): scores to mean 0, std 1 over each batch (for raw-scale "
                             "rewards such as len(r))")
    parser.add_argument("--separate-critic", action="store_true",
                        help="PPOConfig(value_model='separate'): a critic network of its own instead of the default "
                             "value head on the policy")
    args = parser.parse_args()
    reward = REWARDS[args.reward]

    MODEL = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    config = PPOConfig(model_name=MODEL, learning_rate=1e-5, batch_size=args.batch_size, ppo_epochs=4, seed=args.seed,
                       whiten_scores=args.whiten_scores, **({"value_model": "separate"} if args.separate_critic else {}))
    ppo_trainer = PPOTrainer(config, model, tokenizer)

    pool = load_prompts("builtin:instructions")
    heldout, train_prompts = pool[len(pool) - args.heldout :] if args.heldout else [], pool[: len(pool) - args.heldout]
    batches = [train_prompts[i : i + args.batch_size]
               for i in range(0, len(train_prompts) - args.batch_size + 1, args.batch_size)]
    before = held_out_rewards(ppo_trainer, heldout, reward, args.max_new_tokens) if heldout else []

    start, rewards_seen = time.perf_counter(), []
    for i in range(args.iterations):
        if time.perf_counter() - start > args.minutes * 60:
            break
        batch = batches[i % len(batches)]
        responses = ppo_trainer.generate(batch, max_new_tokens=args.max_new_tokens)   # list of strings
        rewards = reward(batch, responses)                                            # plain numbers
        stats = ppo_trainer.step(batch, responses, rewards)                           # dict of floats
        rewards_seen.append(stats["env/reward_mean"])
        print(f"iteration {i + 1}: reward {stats['env/reward_mean']:.3f}  kl {stats['objective/kl']:.3f}  "
              f"clipfrac {stats['policy/clipfrac']:.3f}  elapsed {time.perf_counter() - start:.0f}s", flush=True)
    trained_for = time.perf_counter() - start
    half = max(1, len(rewards_seen) // 2)
    print(f"{len(rewards_seen)} iterations in {trained_for:.0f} s; mean batch reward: first {half} iterations "
          f"{sum(rewards_seen[:half]) / half:.3f}, last {half} iterations {sum(rewards_seen[-half:]) / half:.3f}")
    if heldout:
        after = held_out_rewards(ppo_trainer, heldout, reward, args.max_new_tokens)
        (m0, se0), (m1, se1) = summary(before), summary(after)
        se = math.hypot(se0, se1)
        print(f"held-out ({len(heldout)} prompts x 2 samples): before {m0:.2f} ± {se0:.2f}, after {m1:.2f} ± {se1:.2f}; "
              f"change {m1 - m0:+.2f} ± {se:.2f} ({(m1 - m0) / se if se else float('nan'):+.1f} standard errors)")


if __name__ == "__main__":
    main()
