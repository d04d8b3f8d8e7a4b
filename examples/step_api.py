"""The TRL-style step API on the offline SmolLM2-135M-Instruct: generate -> your reward -> step.

This is the seed program of the old TRL PPOTrainer, unchanged but for the import line and the
model. The reward is the seed's own ``len(r)`` (characters), or with ``--reward keyword`` the number
of warm, positive words (tether.rewards.rules.keyword_reward).

    .venv/bin/python examples/step_api.py                    # full fine-tuning, ~2 min per iteration on 2 cores
    .venv/bin/python examples/step_api.py --model DIR --iterations 1 --batch-size 4   (any HF model)
"""

import argparse
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from tether import PPOConfig, PPOTrainer
from tether.assets import resolve_model
from tether.data import load_prompts
from tether.rewards.rules import keyword_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="HF id, local dir or packaged alias")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop starting new iterations after this")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--reward", choices=["length", "keyword"], default="length")
    args = parser.parse_args()

    MODEL = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    config = PPOConfig(model_name=MODEL, learning_rate=1e-5, batch_size=args.batch_size, ppo_epochs=4)
    ppo_trainer = PPOTrainer(config, model, tokenizer)

    prompts = load_prompts("builtin:instructions")
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts) - args.batch_size + 1, args.batch_size)]
    start, rewards_seen = time.perf_counter(), []
    for i in range(args.iterations):
        if time.perf_counter() - start > args.minutes * 60:
            break
        batch = batches[i % len(batches)]
        responses = ppo_trainer.generate(batch, max_new_tokens=args.max_new_tokens)   # list of strings
        if args.reward == "length":
            rewards = [len(r) for r in responses]                                     # plain numbers
        else:
            rewards = keyword_reward(batch, responses)
        stats = ppo_trainer.step(batch, responses, rewards)                           # dict of floats
        rewards_seen.append(stats["env/reward_mean"])
        print(f"iteration {i + 1}: reward {stats['env/reward_mean']:.3f}  kl {stats['objective/kl']:.3f}  "
              f"clipfrac {stats['policy/clipfrac']:.3f}  elapsed {time.perf_counter() - start:.0f}s", flush=True)
    half = max(1, len(rewards_seen) // 2)
    print(f"mean reward: first {half} iterations {sum(rewards_seen[:half]) / half:.3f}, "
          f"last {half} iterations {sum(rewards_seen[-half:]) / half:.3f}")


if __name__ == "__main__":
    main()
