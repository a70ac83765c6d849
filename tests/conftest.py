import pyro
import pytest
import torch

# Pyro's own tests run in float64 so that tolerances can be tight; so do ours.
torch.set_default_dtype(torch.float64)
# On 2-core machines torch's default of 2 threads makes small ops much slower than 1 thread.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from a fixed seed and an empty param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
