"""Constraints for permutation relaxations: the Birkhoff polytope."""

import torch
from torch.distributions import biject_to, transform_to
from torch.distributions.constraints import Constraint

__all__ = ["doubly_stochastic"]


class _DoublyStochastic(Constraint):
    r"""
    Constrain to the Birkhoff polytope in the two rightmost dimensions: square matrices
    with nonnegative entries whose rows and columns all sum to one (doubly stochastic
    matrices, the convex hull of the permutation matrices by the Birkhoff-von Neumann
    theorem).

    ``check(value)`` accepts row and column sums within ``atol`` of one, and entries no
    smaller than ``-atol``; values that are not square in their last two dims fail.

    Reference:

    [1] S. Linderman, G. Mena, H. Cooper, L. Paninski, J. Cunningham. "Reparameterizing
        the Birkhoff Polytope for Variational Permutation Inference." AISTATS 2018.

    :param float atol: absolute tolerance on the sums and on the sign of the entries.
    """

    event_dim = 2

    def __init__(self, atol=1e-4):
        if not atol >= 0:
            raise ValueError(f"atol must be >= 0, got {atol!r}")
        self.atol = atol
        super().__init__()

    def check(self, value):
        if value.dim() < 2 or value.size(-1) != value.size(-2):
            return torch.zeros(value.shape[:-2], dtype=torch.bool, device=value.device)
        nonneg = (value >= -self.atol).all(-1).all(-1)
        rows = ((value.sum(-1) - 1).abs() <= self.atol).all(-1)
        cols = ((value.sum(-2) - 1).abs() <= self.atol).all(-1)
        return nonneg & rows & cols

    def __repr__(self):
        return f"{type(self).__name__[1:]}(atol={self.atol})"


#: The Birkhoff polytope of doubly stochastic matrices (``event_dim = 2``).
doubly_stochastic = _DoublyStochastic()


@biject_to.register(_DoublyStochastic)
@transform_to.register(_DoublyStochastic)
def _transform_to_doubly_stochastic(constraint):
    # Imported here: the transform module imports this one for its codomain.
    from .birkhoff_stick_breaking import BirkhoffStickBreakingTransform

    return BirkhoffStickBreakingTransform()
