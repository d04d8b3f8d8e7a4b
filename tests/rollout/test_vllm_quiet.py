"""The one vLLM warning tether silences is the harmless one (runs without vLLM installed)."""

import logging

from tether.rollout.vllm import _DerivedBufferNotice, _quiet_derived_buffer_notices


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("vllm.model_executor.model_loader.reload.layerwise", logging.WARNING, __file__, 1,
                             "%s: Failed to load weights", (message,), None)


def test_only_the_rotary_cache_notice_is_dropped():
    notice = _DerivedBufferNotice()
    assert not notice.filter(record("RotaryEmbedding"))  # cos/sin cache: derived from the config
    assert notice.filter(record("QKVParallelLinear"))  # a weight really missing from an update still shows
    assert notice.filter(record("VocabParallelEmbedding"))


def test_the_filter_is_installed_once():
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    before = list(logger.filters)
    try:
        _quiet_derived_buffer_notices()
        _quiet_derived_buffer_notices()
        assert sum(isinstance(f, _DerivedBufferNotice) for f in logger.filters) == 1
    finally:
        logger.filters[:] = before
