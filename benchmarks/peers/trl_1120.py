"""The last PPOTrainer of TRL's later design (trl==1.12.0, trl.experimental.ppo) on the benchmark job."""

import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

from common import load_job, report

job = load_job(sys.argv[1])
torch.set_num_threads(job["threads"])
torch.manual_seed(job["seed"])
tokenizer = AutoTokenizer.from_pretrained(job["policy"])
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
policy = AutoModelForCausalLM.from_pretrained(job["policy"])
ref = AutoModelForCausalLM.from_pretrained(job["policy"])
reward_model = AutoModelForSequenceClassification.from_pretrained(job["reward_model"])
value_model = AutoModelForSequenceClassification.from_pretrained(job["reward_model"])
rows = [q for batch in job["prompts"] for q in batch]
iterations = job["iterations"]
dataset = Dataset.from_dict({"input_ids": [rows[i % len(rows)] for i in range(iterations * job["batch_size"])]})
micro = job["mini_batch_size"]
args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=micro,
                 gradient_accumulation_steps=job["batch_size"] // micro,
                 num_mini_batches=job["batch_size"] // micro, num_ppo_epochs=job["ppo_epochs"],
                 total_episodes=iterations * job["batch_size"], response_length=job["max_new_tokens"],
                 temperature=1.0, stop_token="eos", learning_rate=job["learning_rate"], num_sample_generations=0,
                 local_rollout_forward_batch_size=job["batch_size"], report_to=[], use_cpu=True, bf16=False,
                 save_strategy="no", logging_steps=1, seed=job["seed"], dataloader_drop_last=True)


class Times(TrainerCallback):
    def __init__(self):
        self.marks, self.logs = [time.perf_counter()], []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())
        if job["budget_seconds"] and self.marks[-1] - self.marks[0] > job["budget_seconds"]:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


times = Times()
trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward_model,
                     train_dataset=dataset, value_model=value_model, callbacks=[times])
start = time.perf_counter()
times.marks = [start]
trainer.train()
seconds = [b - a for a, b in zip(times.marks, times.marks[1:])]
rewards = [log["objective/scores"] for log in times.logs if "objective/scores" in log]
report({"peer": "trl==1.12.0", "seconds": seconds, "tokens": [], "rewards": rewards,
        "elapsed": time.perf_counter() - start}, sys.argv[2])
