"""The TRL-style step API on the offline SmolLM2-135M-Instruct: generate -> your reward -> step.

    .venv/bin/python examples/step_api.py                      # ~2 minutes per iteration on 2 CPU cores
    .venv/bin/python examples/step_api.py --model DIR --iterations 1 --batch-size 4   (any HF model)
"""

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from tether import PPOConfig, PPOTrainer
from tether.assets import resolve_model
from tether.data import load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="HF id, local dir or packaged alias")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()

    path = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = PPOConfig(model_name=args.model, learning_rate=1e-5, batch_size=args.batch_size, ppo_epochs=4)
    ppo_trainer = PPOTrainer(config, model, tokenizer)

    prompts = load_prompts("builtin:instructions")
    for i in range(args.iterations):
        batch = prompts[i * args.batch_size : (i + 1) * args.batch_size]
        responses = ppo_trainer.generate(batch, max_new_tokens=args.max_new_tokens)
        rewards = [float(r.count("!")) + 0.1 * len(r.split()) for r in responses]  # your reward here
        stats = ppo_trainer.step(batch, responses, rewards)
        print(f"iteration {i + 1}: reward {stats['env/reward_mean']:.3f}  kl {stats['objective/kl']:.3f}  "
              f"{stats['time/generate'] + stats['time/step']:.1f}s")


if __name__ == "__main__":
    main()
