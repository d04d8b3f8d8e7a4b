"""A rollout engine separate from the trained model (as vLLM is): its weights are pushed once per
iteration, the gap between its logprobs and the trainer's is logged and, in fp32, stops a run whose
engine was not updated; TIS weights the policy loss by the engine-to-trainer ratio.

The engine here is a second transformers model that receives the policy's weights in
``update_weights`` and reports the logprobs of its samples (plus an optional constant offset): it
needs no vLLM, so these run in the main suite."""

import copy
import math

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.models.forward import response_forward
from tether.rollout import HFEngine
from tether.train.faults import EngineMismatchError

PROMPTS = ["hello there", "abc", "what is up", "zz top"]


class CopyEngine:
    """Samples from its own copy of the policy; ``offset`` is added to the logprobs it reports."""

    def __init__(self, policy, offset: float = 0.0):
        self.model = copy.deepcopy(policy)
        self.offset = offset
        self.updates = 0
        self.skip_updates = False

    def update_weights(self, model) -> None:
        self.updates += 1
        if not self.skip_updates:
            self.model.load_state_dict(model.state_dict())

    def generate(self, prompt_ids, prompt_mask, params):
        rollout = HFEngine(self.model).generate(prompt_ids, prompt_mask, params)
        with torch.no_grad():
            lps = response_forward(self.model, rollout.input_ids, rollout.attention_mask,
                                   rollout.response_ids.shape[1], params.temperature).logprobs
        rollout.sample_logprobs = torch.where(rollout.response_mask, lps + self.offset, 0.0)
        return rollout


def make_trainer(model, tokenizer, offset=0.0, **overrides):
    config = dict(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=6, learning_rate=1e-2)
    config.update(overrides)
    engine = CopyEngine(model, offset)
    return PPOTrainer(PPOConfig(**config), model, tokenizer, engine=engine), engine


def iterate(trainer, calls=1, scores=None):
    responses, size = [], len(PROMPTS) // calls
    for i in range(calls):  # several generate() calls make one batch, as with a length sampler
        responses += trainer.generate(PROMPTS[i * size : (i + 1) * size])
    return trainer.step(PROMPTS, responses, scores or [float(len(r)) for r in responses])


def test_weights_go_to_the_engine_once_per_iteration_and_the_gap_is_logged(model, tokenizer):
    trainer, engine = make_trainer(model, tokenizer)
    for _ in range(3):
        stats = iterate(trainer, calls=2)
        assert stats["rollout/logprob_diff_mean"] < 1e-5  # same weights, same kernels
        assert stats["rollout/logprob_diff_max"] < 1e-4
        assert stats["time/weight_sync"] >= 0
    assert engine.updates == 3  # not 6: two generate() calls in an iteration share one update


def test_an_engine_left_with_old_weights_stops_the_run_in_fp32(model, tokenizer):
    trainer, engine = make_trainer(model, tokenizer)
    iterate(trainer)  # the policy moves (lr 1e-2)
    engine.skip_updates = True
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.raises(EngineMismatchError, match="not sampling from the policy"):
        iterate(trainer)
    # stopped before training on the engine's samples: the policy is unchanged
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


def test_the_limit_is_an_option(model, tokenizer):
    trainer, engine = make_trainer(model, tokenizer, offset=0.05)
    with pytest.raises(EngineMismatchError, match="0.05"):
        iterate(trainer)
    trainer, engine = make_trainer(model, tokenizer, offset=0.05, max_engine_logprob_diff=0.1)
    assert iterate(trainer)["rollout/logprob_diff_mean"] == pytest.approx(0.05, abs=1e-5)


def test_load_checkpoint_makes_the_engine_take_the_loaded_weights(model, tokenizer, tmp_path):
    trainer, engine = make_trainer(model, tokenizer)
    iterate(trainer)
    trainer.save_checkpoint(tmp_path / "ck")
    iterate(trainer)
    trainer.load_checkpoint(tmp_path / "ck")
    iterate(trainer)  # would fail if the engine still held the weights of before the load
    assert engine.updates == 3


def test_tis_weights_the_policy_loss_by_the_engine_to_trainer_ratio(model, tokenizer):
    """The engine reports logprobs 0.1 nats below the trainer's: every ratio π_old / π_engine is e^0.1.
    One optimiser step on one minibatch: the first policy loss is e^0.1 times the uncorrected one."""
    geometry = dict(ppo_epochs=1, mini_batch_size=4, gradient_accumulation_steps=1, max_engine_logprob_diff=0.2,
                    whiten_advantages=False)  # whitened advantages would average the token-mean loss to ~0
    losses = {}
    for cap in (None, 2.0, 1.05):
        torch.manual_seed(0)
        trainer, _ = make_trainer(copy.deepcopy(model), tokenizer, offset=-0.1, tis_cap=cap, **geometry)
        stats = iterate(trainer, scores=[1.0, -1.0, 2.0, 0.5])
        losses[cap] = stats["loss/policy"]
        if cap is not None:
            assert stats["rollout/tis_ratio_mean"] == pytest.approx(math.exp(0.1), rel=1e-4)
            assert stats["rollout/tis_capped_frac"] == (1.0 if cap < math.exp(0.1) else 0.0)
        else:
            assert "rollout/tis_ratio_mean" not in stats
    assert abs(losses[None]) > 1e-4  # the comparison means something
    assert losses[2.0] == pytest.approx(math.exp(0.1) * losses[None], rel=1e-3)
    assert losses[1.05] == pytest.approx(1.05 * losses[None], rel=1e-3)


def test_engine_choices(model, tokenizer):
    from tether.rollout.vllm import vllm_available

    with pytest.raises(ValueError, match="not one of"):
        PPOTrainer(PPOConfig(batch_size=4), model, tokenizer, engine="sglang")
    with pytest.raises(TypeError, match="generate"):
        PPOTrainer(PPOConfig(batch_size=4), model, tokenizer, engine=object())
    assert isinstance(PPOTrainer(PPOConfig(batch_size=4), model, tokenizer, engine="hf").engine, HFEngine)
    if not vllm_available():
        with pytest.raises(ImportError, match="setup-vllm.sh"):
            PPOTrainer(PPOConfig(batch_size=4), model, tokenizer, engine="vllm")
