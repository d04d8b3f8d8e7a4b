import torch

from tether.rollout import Rollout, truncate_after_stop


def test_cut_after_first_stop_token_keeps_it_and_pads_the_rest():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [9, 4, 2, 3]])
    out, mask, ended = truncate_after_stop(ids, stop_ids=[2, 4], pad_token_id=0)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True], [True, True, False, False]]
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [9, 4, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_empty_response_is_rejected_with_row():
    import pytest

    with pytest.raises(ValueError, match="responses \\[1\\] are empty"):
        Rollout(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool),
                torch.ones(2, 3, dtype=torch.long), torch.tensor([[True, False, False], [False] * 3]),
                torch.zeros(2, dtype=torch.bool))


def test_padding_is_never_a_stop_even_when_pad_is_eos():
    eos = 2
    ids = torch.tensor([[5, 6, eos, eos], [5, eos, 7, eos], [9, 4, 3, 1]])
    valid = torch.tensor([[True, True, False, False], [True, True, True, False], [True] * 4])
    out, mask, ended = truncate_after_stop(ids, stop_ids=[eos], pad_token_id=eos, valid=valid)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False], [True] * 4]
    assert ended.tolist() == [False, True, False]  # row 0 never produced EOS: its padding does not count
    assert out.tolist() == [[5, 6, eos, eos], [5, eos, eos, eos], [9, 4, 3, 1]]
