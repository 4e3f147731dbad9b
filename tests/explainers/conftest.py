"""Every explainer test starts from the same random state (as Captum's BaseTest does)."""


import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(1234)
    np.random.seed(1234)


