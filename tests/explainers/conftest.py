"""Every explainer test starts from the same random state (as Captum's BaseTest does), on one CPU thread."""

from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(1234)
    np.random.seed(1234)


@pytest.fixture(autouse=True, scope="package")
def one_thread() -> Iterator[None]:
    """The test tensors are tiny: a second intra-op thread only adds synchronisation, which on a shared CI
    machine costs ten times the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
