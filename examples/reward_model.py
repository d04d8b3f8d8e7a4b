"""Train a reward model on preference pairs, then use it as the reward of PPO.

    .venv/bin/python examples/reward_model.py                       # MiniLM backbone, ~1 min on 2 cores
    .venv/bin/python examples/reward_model.py --backbone DIR --epochs 1   (any seq-classification model)

The pairs here are written inline (a JSONL file with prompt / chosen / rejected works the same:
``load_preferences("pairs.jsonl")``); the preference is for polite, specific answers over curt ones.
The trained model scores any (prompt, completion) text — with its own tokenizer, so it can sit under
a policy with another vocabulary.
"""

import argparse

import torch
from transformers import AutoTokenizer

from tether import RewardConfig, RewardModelScorer, RewardTrainer
from tether.assets import resolve_model
from tether.models.loading import load_reward_backbone

TOPICS = ["the weather", "my code", "a recipe", "the train times", "a good book", "the meeting", "my garden",
          "the exam", "a new phone", "the holiday"]
GOOD = ["Happy to help with {t}! Here is a clear, step-by-step answer.",
        "Great question about {t}. The short answer is yes, and here is why."]
BAD = ["No.", "Figure out {t} yourself."]


def pairs():
    rows = []
    for i, topic in enumerate(TOPICS):
        for j in range(2):
            rows.append({"prompt": f"Can you help me with {topic}?", "chosen": GOOD[(i + j) % 2].format(t=topic),
                         "rejected": BAD[(i + j) % 2].format(t=topic)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="all-minilm-l6-v2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/example-rm")
    args = parser.parse_args()

    torch.manual_seed(0)
    path = resolve_model(args.backbone)
    model, tokenizer = load_reward_backbone(path), AutoTokenizer.from_pretrained(path)
    data = pairs()
    config = RewardConfig(learning_rate=2e-4, batch_size=8, epochs=args.epochs, max_length=64)
    trainer = RewardTrainer(config, model, tokenizer, data[4:], eval_dataset=data[:4], log_dir=args.out)
    history = trainer.train()
    trainer.fit_normalization()
    final = trainer.save_pretrained(f"{args.out}/final", info=history[-1])
    print(f"held-out pair accuracy {history[-1]['eval/accuracy']:.2f}; saved to {final}")

    score = RewardModelScorer.from_pretrained(str(final))  # now usable as PPOTrainer(..., reward_model=score)
    polite, curt = score(["Can you help me with taxes?"] * 2, ["Happy to help with taxes! Here is how.", "No."])
    print(f"polite answer {polite:.2f} vs curt answer {curt:.2f}")


if __name__ == "__main__":
    main()
