"""`tether report RUN_DIR` writes PNG plots and a Markdown/HTML summary with sample completions."""

from tether import PPOConfig, PPOTrainer
from tether.cli import main
from tether.tracking.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_plots_and_summaries(tmp_path, model, tokenizer, capsys):
    run = tmp_path / "run"
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=4), model, tokenizer,
                         reward_fn=lambda p, c: [float(len(x)) for x in c])
    trainer.train(["hello there", "abc", "what is up", "zz top"] * 3, output_dir=run, progress=False)
    written = write_report(run)
    for stem in ("reward", "kl", "entropy", "clipfrac", "value_error", "response_length", "curves"):
        assert written[stem].read_bytes().startswith(PNG), stem
    markdown = written["markdown"].read_text()
    assert "| env/reward_mean |" in markdown and "## Sample completions" in markdown
    assert "hello there" in markdown or "what is up" in markdown
    assert "<table>" in written["html"].read_text()

    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "plots" / "kl.png").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err


def test_report_of_a_reward_model_run_plots_its_metrics(tmp_path):
    run = tmp_path / "rm"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.7, "eval/accuracy": 0.6}\n'
                                       '{"step": 2, "train/loss": 0.5, "eval/accuracy": 0.7}\n')
    written = write_report(run)
    assert {"train_loss", "eval_accuracy", "curves"} <= set(written)
    assert "| train/loss | 0.6 | 0.6 |" in written["markdown"].read_text()


def test_hardware_description_names_the_cpu_and_its_float_instructions():
    from tether.tracking.metrics import describe_cpu, hardware_description

    info = ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: avx512f avx512_bf16\n")
    assert describe_cpu(info, 2) == "AMD EPYC 7B13, 2 cores, AVX2"  # the first processor's
    bf16 = "model name : Intel(R) Xeon(R)\nflags : avx2 avx512f avx512_bf16 amx_bf16\n"
    assert describe_cpu(bf16, 2) == "Intel(R) Xeon(R), 2 cores, AVX2 / AVX-512 / AVX512-BF16 / AMX-BF16"
    assert describe_cpu("", 4, "arm64", "NO AVX") == "arm64, 4 cores, capability NO AVX"
    assert "cores" in hardware_description("cpu")
