"""Write tether/data/builtin/everyday.jsonl: the templated prompt set that adds to builtin:instructions (the
demo evaluates on more held-out prompts than the hand-made set leaves). Topics × the same five templates.

    python scripts/builtin_prompts.py
"""

import json
from pathlib import Path

TEMPLATES = ("What do you think about {}? Answer in one or two sentences.", "Write a short note about {}.",
             "Describe {} in two sentences.", "Write one sentence about {}.", "Tell me briefly about {}.")
TOPICS = (
    "a village fair", "a flat tyre", "a picnic by the lake", "a school play", "a foggy morning", "a chess game",
    "a windy beach", "a bakery at dawn", "a swimming pool", "a late train", "a garden in autumn", "a wedding",
    "a hiking trail", "a noisy restaurant", "a quiet library corner", "a ferry crossing", "a farmers' market",
    "an empty stadium", "an old bookshop", "a snowman", "a kitchen on Sunday", "a road trip", "a new bicycle",
    "a summer storm", "a dog in the park", "a family dinner", "a street musician", "a hot afternoon",
    "a cold office", "a broken window", "a first apartment", "a board game night", "a long walk home",
    "a science fair", "a night market", "a harbour at sunset", "a fishing trip", "a flower shop",
    "a children's playground", "a busy airport", "a village church", "a spring rain", "a bus station",
    "an evening class", "an art gallery", "a wooden bridge", "a vegetable garden", "a missed call",
    "a birthday cake", "a rooftop view", "a tennis match", "a country lane", "a cinema queue",
    "a laundry day", "a phone that will not charge", "a mountain lake", "the first snow", "the school bus",
    "the town square", "the end of summer", "the corner shop", "the morning news", "the smell of rain",
    "the sound of the sea", "the last day of holidays", "your grandparents' house", "your morning routine",
    "your first car")


def main() -> None:
    path = Path(__file__).resolve().parent.parent / "tether" / "data" / "builtin" / "everyday.jsonl"
    rows = [{"prompt": t.format(topic)} for topic in TOPICS for t in TEMPLATES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
