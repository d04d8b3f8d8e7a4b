"""tether on the benchmark job, with the step API (the same loop as the trl==0.11.4 peer), plus
the cost of the work no PPO implementation can avoid, measured in the same process."""

import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from common import Clock, job_scores, load_job, peak_rss_mib, report

from tether import PPOConfig, PPOTrainer
from tether.data.prompts import left_pad, right_pad

job = load_job(sys.argv[1])
torch.set_num_threads(job["threads"])
torch.manual_seed(job["seed"])
tokenizer = AutoTokenizer.from_pretrained(job["policy"])
model = AutoModelForCausalLM.from_pretrained(job["policy"])
if job.get("lora_r"):  # the same adapters as the peer's; the reference is the policy with them disabled
    from tether.models.loading import LoraSettings, apply_lora

    model = apply_lora(model, LoraSettings(r=job["lora_r"], alpha=2 * job["lora_r"]))
separate = job["value_model"] == "separate"
reward_model = None  # the seed program's rule reward needs none; a critic from the reward model does
if job.get("reward", "model") == "model" or separate:
    reward_model = AutoModelForSequenceClassification.from_pretrained(job["reward_model"]).eval()
config = PPOConfig(batch_size=job["batch_size"], mini_batch_size=job["mini_batch_size"], gradient_accumulation_steps=1,
                   ppo_epochs=job["ppo_epochs"], learning_rate=job["learning_rate"], max_new_tokens=job["max_new_tokens"],
                   temperature=1.0, value_model=job["value_model"], critic_init="reward_model" if separate else "policy",
                   seed=job["seed"], use_chat_template=False, **({"precision": job["precision"]} if job.get("precision") else {}))
trainer = PPOTrainer(config, model, tokenizer, **({"reward_model": reward_model, "reward_tokenizer": tokenizer}
                                                  if reward_model is not None else {}))
seconds, tokens, rewards = [], [], []
start = time.perf_counter()
for it in range(job["iterations"]):
    if job["budget_seconds"] and time.perf_counter() - start > job["budget_seconds"]:
        break
    batch = job["prompts"][it % len(job["prompts"])]
    queries = [torch.tensor(q) for q in batch]
    clock = Clock()
    responses = trainer.generate(queries, return_prompt=False, max_new_tokens=job["max_new_tokens"])
    scores = job_scores(job, tokenizer, reward_model, batch, responses)
    trainer.step(queries, responses, scores)
    seconds.append(clock.lap())
    tokens.append(sum(len(r) for r in responses))
    rewards.append(sum(scores) / len(scores))
result = {"peer": f"tether ({job['value_model']} critic{', LoRA' if job.get('lora_r') else ''}, {trainer.precision.mode})", "seconds": seconds, "tokens": tokens, "rewards": rewards,
          "elapsed": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}  # before the extra optimiser below

if job["overhead"]:
    # the work of the last iteration that any implementation must do, each piece timed on its own
    prompt_ids, prompt_mask = left_pad(batch, tokenizer.pad_token_id)
    resp_ids, resp_mask = right_pad([r.tolist() for r in responses], tokenizer.pad_token_id)
    ids, mask = torch.cat([prompt_ids, resp_ids], 1), torch.cat([prompt_mask, resp_mask], 1).long()
    length = resp_ids.shape[1]
    parts = {}
    clock = Clock()
    with torch.no_grad(), trainer.precision.autocast():  # the same precision as the trainer's
        model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(), do_sample=True, max_new_tokens=length,
                       min_new_tokens=length, pad_token_id=tokenizer.pad_token_id)
        parts["generate (KV cache)"] = clock.lap()
        keep = torch.arange(ids.shape[1] - length - 1, ids.shape[1])  # only response positions need logits
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=keep)
        parts["forward policy (+ values)"] = clock.lap()
        if trainer.ref_model is not None:
            trainer.ref_model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
        else:  # LoRA: the reference is the same weights with the adapters off
            with model.disable_adapter():
                model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
        parts["forward reference"] = clock.lap()
        if reward_model is not None:
            reward_model(input_ids=ids, attention_mask=mask)
            parts["forward reward model"] = clock.lap()
        if separate:
            trainer.critic.backbone(input_ids=ids, attention_mask=mask)
            parts["forward critic"] = clock.lap()
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    optimizer = torch.optim.AdamW(params, lr=0.0, fused=True)
    head = trainer.value_head
    for _ in range(job["ppo_epochs"]):
        for rows in torch.arange(len(batch)).split(job["mini_batch_size"]):
            with trainer.precision.autocast():
                out = model(input_ids=ids[rows], attention_mask=mask[rows], output_hidden_states=head is not None,
                            logits_to_keep=keep)
                loss = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(
                    -1, resp_ids[rows].unsqueeze(-1)).mean()
                if head is not None:
                    loss = loss + head(out.hidden_states[-1]).mean()
                if separate:
                    loss = loss + trainer.critic(ids[rows], mask[rows], None).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    parts["forward+backward+AdamW per minibatch"] = clock.lap()
    result["unavoidable"] = parts
report(result, sys.argv[2])
