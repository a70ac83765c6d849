"""The exact-gradient harness lives in :mod:`pyro_relax.testing` (public, for users' own
estimators); the package's tests import it from here."""

from pyro_relax.testing import (  # noqa: F401
    check_unbiased,
    estimated_grads,
    exact_grads,
    exact_loss,
    init_params,
    param_leaves,
)
