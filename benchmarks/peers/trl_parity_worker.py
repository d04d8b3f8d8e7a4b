"""One side of benchmarks/trl_parity.py: the same TRL 0.11 step-API program on ``trl`` or ``tether``.

    python trl_parity_worker.py trl|tether MODELS_DIR OUT.json

Every case builds the models afresh (same files, same value-head weights), runs ``step`` on fixed
queries, responses and scores (two PPO epochs of one minibatch: no shuffling to differ), and records
the stats, the parameter update and, for the generation cases, response lengths.
"""

import importlib
import json
import sys
import traceback

import torch
from transformers import AutoTokenizer

LIB, MODELS, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
lib = importlib.import_module(LIB)
core = importlib.import_module(LIB + ".core")


def load(kind: str):
    cls = lib.AutoModelForSeq2SeqLMWithValueHead if kind == "t5" else lib.AutoModelForCausalLMWithValueHead
    model = cls.from_pretrained(f"{MODELS}/{kind}", summary_dropout_prob=0.0)
    ref = cls.from_pretrained(f"{MODELS}/{kind}", summary_dropout_prob=0.0)
    gen = torch.Generator().manual_seed(1)
    for m in (model, ref):
        m.v_head.summary.weight.data.copy_(torch.randn(m.v_head.summary.weight.shape, generator=gen) * 0.1)
        m.v_head.summary.bias.data.zero_()
    tokenizer = AutoTokenizer.from_pretrained(f"{MODELS}/{kind}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, ref, tokenizer


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for _, p in sorted(model.named_parameters())])


def step_case(kind="gpt2", masks=False, **config):
    core.set_seed(0)
    model, ref, tok = load(kind)
    queries = [torch.tensor(tok.encode(t)) for t in ("This morning I went to the", "this is a test",
                                                     "The movie was great", "I went to the store")]
    responses = [torch.tensor(tok.encode(t)) for t in (" park and I loved it.", " of the movie",
                                                       " and I loved it", " this morning.")]
    if kind == "t5":  # TRL's seq2seq form: the decoder sequence from its start token
        responses = [torch.cat([torch.tensor([model.config.decoder_start_token_id]), r]) for r in responses]
    scores = [torch.tensor(s) for s in (1.5, -0.7, 0.2, -2.0)]
    trainer = lib.PPOTrainer(lib.PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=2, **config), model, ref, tok)
    before = flat(model)
    response_masks = None
    if masks:  # a tool's answer in the middle of each response: not trained on
        response_masks = [torch.tensor([1] + [0] + [1] * (len(r) - 2)) for r in responses]
    stats = trainer.step(queries, responses, scores, response_masks)
    return {"update": (flat(model) - before).tolist(),
            "stats": {k: float(v) for k, v in stats.items() if getattr(v, "ndim", 0) == 0 or isinstance(v, float)},
            "keys": sorted(stats)}


def length_case(**gen_kwargs):
    core.set_seed(0)
    model, ref, tok = load("gpt2")
    trainer = lib.PPOTrainer(lib.PPOConfig(batch_size=8, mini_batch_size=8), model, ref, tok)
    queries = [torch.tensor(tok.encode(t)) for t in ("This morning I went to the", "this is a test") * 4]
    gen = {"do_sample": True, "top_k": 0.0, "top_p": 1.0, "pad_token_id": tok.eos_token_id, **gen_kwargs}
    responses = trainer.generate(queries, return_prompt=False, **gen)
    return {"lengths": [len(r) for r in responses], "query_lengths": [len(q) for q in queries]}


CASES = {
    "step: defaults": lambda: step_case(),
    "step: whiten_rewards": lambda: step_case(whiten_rewards=True),
    "step: score_clip=0.5": lambda: step_case(score_clip=0.5),
    "step: kl_penalty=abs, adap_kl_ctrl=False": lambda: step_case(kl_penalty="abs", adap_kl_ctrl=False),
    "step: gamma=0.9, lam=0.8, cliprange=0.1": lambda: step_case(gamma=0.9, lam=0.8, cliprange=0.1),
    "step: use_score_scaling+norm": lambda: step_case(use_score_scaling=True, use_score_norm=True),
    "step: response_masks": lambda: step_case(masks=True),
    "step: T5 (seq2seq)": lambda: step_case(kind="t5"),
    "generate: no max_new_tokens": lambda: length_case(),
    "generate: max_new_tokens=8, eos_token_id=-1": lambda: length_case(max_new_tokens=8, eos_token_id=-1),
}

results = {}
for name, run in CASES.items():
    try:
        results[name] = run()
    except Exception as err:  # noqa: BLE001 - a case that fails is reported, the others still run
        results[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:200],
                         "trace": traceback.format_exc()[-600:]}
with open(OUT, "w") as handle:
    json.dump(results, handle)
