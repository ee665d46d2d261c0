"""Meta tests run thousands of tiny ops: one intra-op thread is several times faster than two
when other processes share the cores (thread hand-offs dominate), so pin it for these tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
