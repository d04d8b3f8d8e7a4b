"""Prompts that do not fill a batch: a warning when a one-epoch run never trains on them, INFO when the run plans
several epochs, each of which reshuffles them (also when max_iterations stops it early, as a run trained in
segments does)."""

import logging

from tether import PPOConfig, PPOTrainer


def run(model, tokenizer, caplog, prompts, max_iterations, epochs=3):
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=3), model, tokenizer,
                         reward_fn=lambda p, c: [1.0] * len(c))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tether.train.loop"):
        trainer.train(prompts, epochs=epochs, max_iterations=max_iterations, progress=False)
    return [r for r in caplog.records if "do not fill a batch" in r.getMessage()]


def test_left_over_prompts_are_a_warning_only_when_the_run_never_reaches_them(model, tokenizer, caplog):
    prompts = ["a b", "c d", "e f", "g h", "i j", "k l"]  # 6 prompts, batches of 4: 2 left over per epoch
    (one_epoch,) = run(model, tokenizer, caplog, prompts, max_iterations=None, epochs=1)
    assert one_epoch.levelno == logging.WARNING and "not trained on" in one_epoch.getMessage()
    for stop in (None, 1):  # the whole plan, or its first segment
        (several,) = run(model, tokenizer, caplog, prompts, max_iterations=stop)
        assert several.levelno == logging.INFO and "a different set each epoch" in several.getMessage()
    assert run(model, tokenizer, caplog, prompts[:4], max_iterations=1) == []
