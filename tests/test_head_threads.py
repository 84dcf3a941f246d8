"""The heads' epochs run on one torch thread, and everything around them on as many as before."""

from __future__ import annotations

import pytest
import torch

from train.fit_head import one_torch_thread


def test_one_thread_inside_and_the_count_restored_even_after_ctrl_c() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyboardInterrupt), one_torch_thread():
            raise KeyboardInterrupt
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
