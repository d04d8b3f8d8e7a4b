"""LoRA end to end: train adapters (the reference is the same weights with adapters off, so no
second copy is held), merge them into a plain model, and evaluate it against the base.

    .venv/bin/python examples/lora_run.py                           # ~8 min on 2 CPU cores
    .venv/bin/python examples/lora_run.py --model DIR --iterations 1 --batch-size 4 --eval-prompts 4

Same as the command line ``tether ppo`` (with ``model.lora.r=16``), ``tether export --merge`` and
``tether eval``.
"""

import argparse

from tether import LoraSettings, PPOConfig, PPOTrainer, load_causal_lm, load_tokenizer
from tether.assets import resolve_model
from tether.data import load_prompts
from tether.evaluation import EvalSettings, evaluate, write_eval
from tether.models.export import merge_adapters
from tether.rewards import make_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--out", default="runs/lora-example")
    args = parser.parse_args()

    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    policy = load_causal_lm(path, lora=LoraSettings(r=16, alpha=32))
    reward = make_rule("sentiment", {})  # VADER: warmer answers score higher
    prompts = load_prompts("builtin:instructions")
    train_prompts, heldout = prompts[: -args.eval_prompts], prompts[-args.eval_prompts:]
    config = PPOConfig(batch_size=args.batch_size, mini_batch_size=min(8, args.batch_size), ppo_epochs=2,
                       learning_rate=3e-4, critic_learning_rate=1e-3, value_model="head",
                       max_new_tokens=args.max_new_tokens)
    trainer = PPOTrainer(config, policy, tokenizer, reward_fn=reward)
    trainer.train(train_prompts, max_iterations=args.iterations, output_dir=args.out)

    merged = merge_adapters(f"{args.out}/final", f"{args.out}/merged")  # a plain transformers model
    settings = EvalSettings(max_new_tokens=args.max_new_tokens)
    result = evaluate(load_causal_lm(str(merged)), tokenizer, heldout, reward,
                      baseline=load_causal_lm(path), settings=settings)
    write_eval(result, f"{args.out}/eval")
    s = result["summary"]
    print(f"held-out reward {s['baseline_reward_mean']:.3f} (base) -> {s['reward_mean']:.3f} (trained); "
          f"win rate {s['win_rate']:.2f}; KL {s['kl_to_baseline']:.2f} nats; merged model in {merged}")


if __name__ == "__main__":
    main()
