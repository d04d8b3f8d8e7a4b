import logging
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

torch.set_num_threads(2)
# precision "auto" picks bf16-mixed on CPUs with AVX512-BF16; the suite's float tolerances are for fp32,
# so it runs fp32 on every CPU (tests of bf16-mixed ask for it explicitly)
os.environ.setdefault("TETHER_PRECISION", "fp32")
logging.getLogger("tether").setLevel(logging.INFO)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_llama(tokenizer)
