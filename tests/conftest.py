import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

torch.set_num_threads(2)
logging.getLogger("tether").setLevel(logging.INFO)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_llama(tokenizer)
