"""A LoRA policy in vLLM two ways, on the demo's sampling work: merged weights (what VLLMEngine does) vs
vLLM's own LoRA adapters (``enable_lora``; adapters saved and loaded in place each iteration).

    .venv-vllm/bin/python benchmarks/vllm_lora_modes.py                     # both modes, bf16 and fp32
    .venv-vllm/bin/python benchmarks/vllm_lora_modes.py adapters bfloat16   # one mode, in this process

SmolLM2-135M-Instruct + LoRA r=16 on q/k/v/o with non-zero adapters; four iterations, each: a small update of
the adapters, the weight sync (seconds), sampling 16 and 128 prompts (32 new tokens, T = 0.7, response
tokens/s) and the engine-vs-HF-forward logprob gap of four samples (nats per token). Each mode runs in its
own process (one in-process vLLM engine per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch

TEMPERATURE = 0.7


def run_all() -> None:
    """Every (dtype, mode) in a fresh process; prints their result lines."""
    for dtype in ("bfloat16", "float32"):
        for mode in ("merged", "adapters"):
            run = subprocess.run([sys.executable, __file__, mode, dtype], capture_output=True, text=True)
            print("\n".join(line for line in run.stdout.splitlines() if line.startswith(mode)), flush=True)
            if run.returncode:
                print(f"{mode} {dtype} failed (exit {run.returncode}):\n{run.stderr[-2000:]}", flush=True)


def lora_policy():
    """SmolLM2 + LoRA r=16 with non-zero adapters (as after training), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether import LoraSettings
    from tether.assets import resolve_model
    from tether.models.loading import apply_lora

    source = resolve_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(source), LoraSettings(r=16, alpha=32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model, AutoTokenizer.from_pretrained(source)


def start_engine(model, mode: str, dtype: str):
    """An in-process ``vllm.LLM`` with dummy weights, set up as VLLMEngine sets it up on a CPU."""
    from vllm import LLM

    from tether.rollout.vllm import _base_model, preserved_process_state

    config_dir = tempfile.mkdtemp(prefix="tether-bench-")
    _base_model(model).config.save_pretrained(config_dir)
    opts = dict(enable_chunked_prefill=False, max_num_batched_tokens=8192, kv_cache_memory_bytes=1 << 30)
    if mode == "adapters":
        opts.update(enable_lora=True, max_lora_rank=16, max_loras=1)
    with preserved_process_state():
        return LLM(model=config_dir, load_format="dummy", skip_tokenizer_init=True, dtype=dtype,
                   generation_config="vllm", logprobs_mode="processed_logprobs", max_model_len=2048, seed=0, **opts)


def sync(llm, model, mode: str, first: bool, adapter_dir: str):
    """Push the policy: merged weights every time, or the base once and the adapters every time.
    Returns (seconds, the LoRARequest to sample with or None)."""
    from vllm.lora.request import LoRARequest

    from tether.rollout.vllm import _base_model, engine_weights

    start = time.perf_counter()
    if mode == "merged" or first:
        if mode == "merged":
            state = dict(engine_weights(model))
        else:  # the base weights alone, under the transformers model's names
            state = {k.replace(".base_layer.", "."): v.detach() for k, v in _base_model(model).state_dict().items()
                     if ".lora_" not in k}
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items()),
                                                     "is_checkpoint_format": True})
    lora = None
    if mode == "adapters":
        model.save_pretrained(adapter_dir)
        lora = LoRARequest("policy", 1, adapter_dir, load_inplace=True)
    llm.reset_prefix_cache()
    return time.perf_counter() - start, lora


def sample(llm, prompts: list[list[int]], lora, seed: int):
    """(response tokens/s, vLLM's outputs) for one batch, one seeded request per prompt."""
    from vllm import SamplingParams, TokensPrompt

    params = [SamplingParams(temperature=TEMPERATURE, max_tokens=32, logprobs=0, seed=seed + i)
              for i in range(len(prompts))]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                           lora_request=lora)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return tokens / (time.perf_counter() - start), outputs


def logprob_gap(model, prompts: list[list[int]], outputs, dtype: str) -> tuple[float, float]:
    """Mean and max |engine logprob − HF forward logprob| (nats per token) over four samples."""
    diffs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        for prompt, output in zip(prompts[:4], outputs[:4]):
            response = list(output.outputs[0].token_ids)
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            ours = torch.log_softmax(logits.float() / TEMPERATURE, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
            engine = torch.tensor([step[token].logprob for step, token in zip(output.outputs[0].logprobs, response)])
            diffs.append((ours - engine).abs())
    d = torch.cat(diffs)
    return d.mean().item(), d.max().item()


def run_one(mode: str, dtype: str) -> None:
    from tether.data import load_prompts

    model, tokenizer = lora_policy()
    start = time.perf_counter()
    llm = start_engine(model, mode, dtype)
    print(f"{mode} {dtype} start {time.perf_counter() - start:.1f}", flush=True)
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
           for p in load_prompts("builtin:instructions")]
    with tempfile.TemporaryDirectory(prefix="tether-adapter-") as adapter_dir:
        for it in range(4):
            with torch.no_grad():  # a small update of the adapters, as after a PPO step
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.add_(torch.randn_like(p) * 1e-3)
            seconds, lora = sync(llm, model, mode, it == 0, adapter_dir)
            rate16, outputs = sample(llm, ids[:16], lora, 100 * it)
            rate128, _ = sample(llm, ids[16:144], lora, 100 * it)
            mean, worst = logprob_gap(model, ids[:16], outputs, dtype)
            print(f"{mode} {dtype} it{it} sync {seconds:.2f}s gen@16 {rate16:.0f} gen@128 {rate128:.0f} tok/s "
                  f"gap mean {mean:.2g} max {worst:.2g}", flush=True)


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if len(sys.argv) < 3:
        run_all()
    else:
        run_one(sys.argv[1], sys.argv[2])
