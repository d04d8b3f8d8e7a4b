"""A LoRA policy in vLLM two ways, on the demo's sampling work: merged weights (what VLLMEngine does) vs
vLLM's own LoRA adapters (``enable_lora``; adapters saved and loaded in place each iteration).

    .venv-vllm/bin/python benchmarks/vllm_lora_modes.py              # both modes, bf16 and fp32
    .venv-vllm/bin/python benchmarks/vllm_lora_modes.py adapters bfloat16   # one mode, in this process

SmolLM2-135M-Instruct + LoRA r=16 on q/k/v/o with non-zero adapters; four iterations, each: a small update of
the adapters, the weight sync (seconds), sampling 16 and 128 prompts (32 new tokens, T = 0.7, response
tokens/s) and the engine-vs-HF-forward logprob gap of four samples (nats per token). Each mode runs in its
own process (one in-process vLLM engine per process).
"""
import subprocess
import os, sys, time, tempfile, torch
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"; os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
if len(sys.argv) < 3:
    for dtype in ("bfloat16", "float32"):
        for mode in ("merged", "adapters"):
            run = subprocess.run([sys.executable, __file__, mode, dtype], capture_output=True, text=True)
            print("\n".join(l for l in run.stdout.splitlines() if l.startswith(mode)), flush=True)
            if run.returncode:
                print(f"{mode} {dtype} failed (exit {run.returncode}):\n{run.stderr[-2000:]}", flush=True)
    sys.exit(0)
mode, dtype = sys.argv[1], sys.argv[2]
from transformers import AutoModelForCausalLM, AutoTokenizer
from tether import LoraSettings
from tether.assets import resolve_model
from tether.data import load_prompts
from tether.models.loading import apply_lora
from tether.rollout.vllm import engine_state_dict, _base_model, preserved_process_state
from vllm import LLM, SamplingParams, TokensPrompt
from vllm.lora.request import LoRARequest
src = resolve_model("smollm2-135m-instruct"); tok = AutoTokenizer.from_pretrained(src)
torch.manual_seed(0)
model = apply_lora(AutoModelForCausalLM.from_pretrained(src), LoraSettings(r=16, alpha=32))
for n, p in model.named_parameters():   # non-zero adapters, as after training
    if "lora_B" in n: p.data.normal_(0, 0.02)
cfg = tempfile.mkdtemp(); _base_model(model).config.save_pretrained(cfg)
opts = dict(enable_chunked_prefill=False, max_num_batched_tokens=8192, kv_cache_memory_bytes=1 << 30)
if mode == "adapters": opts.update(enable_lora=True, max_lora_rank=16, max_loras=1)
t = time.time()
with preserved_process_state():
    llm = LLM(model=cfg, load_format="dummy", skip_tokenizer_init=True, dtype=dtype, generation_config="vllm",
              logprobs_mode="processed_logprobs", max_model_len=2048, seed=0, **opts)
print(mode, dtype, "start", round(time.time() - t, 1), flush=True)
prompts = load_prompts("builtin:instructions")
ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
adir = tempfile.mkdtemp(dir="/dev/shm")
def sync(it):
    t = time.time()
    if mode == "merged":
        state = engine_state_dict(model)
    else:
        state = {k.replace(".base_layer.", "."): v.detach() for k, v in _base_model(model).state_dict().items() if ".lora_" not in k}
    if it == 0 or mode == "merged":
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items()), "is_checkpoint_format": True})
    lora = None
    if mode == "adapters":
        model.save_pretrained(adir); lora = LoRARequest("policy", 1, adir, load_inplace=True)
    llm.reset_prefix_cache()
    return time.time() - t, lora
def gen(batch, lora, seed):
    sp = [SamplingParams(temperature=0.7, max_tokens=32, logprobs=0, seed=seed + i) for i in range(len(batch))]
    t = time.time(); out = llm.generate([TokensPrompt(prompt_token_ids=b) for b in batch], sp, use_tqdm=False, lora_request=lora)
    n = sum(len(o.outputs[0].token_ids) for o in out); return n / (time.time() - t), out
def gap(batch, out):  # engine vs HF forward logprobs (fp32 model, autocast if bf16)
    diffs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        for b, o in zip(batch[:4], out[:4]):
            resp = list(o.outputs[0].token_ids); x = torch.tensor([b + resp])
            logits = model(input_ids=x).logits[0, len(b) - 1:-1].float() / 0.7
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(resp)[:, None])[:, 0]
            eng = torch.tensor([list(d.values())[0].logprob if len(d) == 1 else d[t].logprob for d, t in zip(o.outputs[0].logprobs, resp)])
            diffs.append((lp - eng).abs())
    d = torch.cat(diffs); return d.mean().item(), d.max().item()
rows = []
for it in range(4):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n: p.add_(torch.randn_like(p) * 1e-3)   # an update
    s, lora = sync(it)
    r16, out = gen(ids[:16], lora, 100 * it); r128, _ = gen(ids[16:144], lora, 100 * it)
    g = gap(ids[:16], out)
    print(f"{mode} {dtype} it{it} sync {s:.2f}s gen@16 {r16:.0f} gen@128 {r128:.0f} tok/s gap mean {g[0]:.2g} max {g[1]:.2g}", flush=True)
