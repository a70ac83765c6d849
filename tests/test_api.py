"""The package's public surface: subpackages as attributes, and the ELBOs' constructor
defaults."""

import numpy as np
import pytest


def test_subpackages_are_attributes_after_import():
    import pyro_relax

    for name in ["infer", "distributions", "ops"]:
        assert name in pyro_relax.__all__
        module = getattr(pyro_relax, name)
        assert module.__name__ == f"pyro_relax.{name}"
        for public in module.__all__:
            assert hasattr(module, public), (name, public)
    assert pyro_relax.infer.ARSM_ELBO is not None
    assert pyro_relax.distributions.GumbelSinkhorn is not None
    assert pyro_relax.ops.log_sinkhorn is not None
    assert isinstance(pyro_relax.__version__, str)


@pytest.mark.parametrize("name", ["ReinforceLOO_ELBO", "VarGrad_ELBO"])
def test_multi_particle_elbos_default_to_two_particles(name):
    import pyro_relax

    elbo_class = getattr(pyro_relax.infer, name)
    assert elbo_class().num_particles == 2
    elbo = elbo_class(num_particles=np.int64(4))
    assert elbo.num_particles == 4 and type(elbo.num_particles) is int
