"""The step-API PPOTrainer of trl==0.11.4 on the benchmark job (run in its own venv)."""

import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

from common import Clock, job_scores, load_job, report

job = load_job(sys.argv[1])
torch.set_num_threads(job["threads"])
torch.manual_seed(job["seed"])
tokenizer = AutoTokenizer.from_pretrained(job["policy"])
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
if job.get("lora_r"):  # adapters on the attention projections; the reference is the policy with them disabled
    from peft import LoraConfig

    lora = LoraConfig(r=job["lora_r"], lora_alpha=2 * job["lora_r"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained(job["policy"], peft_config=lora)
    ref = None
else:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(job["policy"])
    ref = AutoModelForCausalLMWithValueHead.from_pretrained(job["policy"])
reward_model = None  # the seed program's rule reward needs none
if job.get("reward", "model") == "model":
    reward_model = AutoModelForSequenceClassification.from_pretrained(job["reward_model"]).eval()
config = PPOConfig(model_name=job["policy"], learning_rate=job["learning_rate"], batch_size=job["batch_size"],
                   mini_batch_size=job["mini_batch_size"], gradient_accumulation_steps=1, ppo_epochs=job["ppo_epochs"],
                   seed=job["seed"], log_with=None)
trainer = PPOTrainer(config, model, ref, tokenizer)
gen = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=job["max_new_tokens"], min_length=-1,
           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
seconds, tokens, rewards = [], [], []
start = time.perf_counter()
for it in range(job["iterations"]):
    if job["budget_seconds"] and time.perf_counter() - start > job["budget_seconds"]:
        break
    batch = job["prompts"][it % len(job["prompts"])]
    queries = [torch.tensor(q) for q in batch]
    clock = Clock()
    responses = trainer.generate(queries, return_prompt=False, batch_size=len(queries), **gen)
    scores = job_scores(job, tokenizer, reward_model, batch, responses)
    trainer.step(queries, list(responses), [torch.tensor(s) for s in scores])
    seconds.append(clock.lap())
    tokens.append(sum(len(r) for r in responses))
    rewards.append(sum(scores) / len(scores))
report({"peer": "trl==0.11.4" + (" LoRA" if job.get("lora_r") else ""), "seconds": seconds, "tokens": tokens, "rewards": rewards,
        "elapsed": time.perf_counter() - start}, sys.argv[2])
