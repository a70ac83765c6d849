import pyro
import pytest
import torch

# Pyro's own tests run in float64 so that tolerances can be tight; so do ours.
torch.set_default_dtype(torch.float64)
# On 2-core machines torch's default of 2 threads makes small ops much slower than 1 thread.
torch.set_num_threads(1)

#: modules whose tests are long statistical or end-to-end runs: marked ``slow`` (CI runs them;
#: ``pytest -m "not slow"`` is the fast half), except the representatives below
SLOW_MODULES = (
    "tests/infer/test_unbiased.py",
    "tests/infer/test_categorical_family.py",
    "tests/infer/test_relax.py",
    "tests/infer/test_guide_styles.py",
    "tests/infer/pyro_cases/",
    "tests/models/test_vaes.py",
    "tests/test_tutorials.py",
)
#: fast representatives of the slow modules: one exact-gradient check per estimator family,
#: a guide style of each kind, the committed-notebook checks
FAST = (
    "test_unbiased.py::test_unbiased[loo3-vectorized-plate_bernoulli]",
    "test_unbiased.py::test_unbiased[arm-two_layer_bernoulli]",
    "test_unbiased.py::test_power_disarm_without_sigmoid_weight",
    "test_categorical_family.py::test_unbiased[arsm-plate_categorical]",
    "test_categorical_family.py::test_unbiased[disarm-tree-one_hot_categorical]",
    "test_relax.py::test_unbiased_untrained[neural-vector_bernoulli]",
    "test_relax.py::test_variance_gradient_reaches_only_the_control_variate",
    "test_relax.py::test_a_network_shared_by_two_sites",
    "test_relax.py::test_bad_arguments",
    "test_guide_styles.py::test_loss_and_gradient[continuous-AutoNormalMessenger-rloo]",
    "test_guide_styles.py::test_loss_and_gradient[discrete-GuideMessenger-disarm]",
    "test_tutorials.py::test_committed_notebook_has_outputs",
    "test_tutorials.py::test_tutorials_exist",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::")[0]
        if any(path.startswith(m) for m in SLOW_MODULES) and not any(
            f in item.nodeid for f in FAST
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from a fixed seed and an empty param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
