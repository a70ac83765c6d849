"""The strategy objects of :class:`~pyro_relax.infer.ARSM_ELBO`: how one family of discrete
guide sites is sampled from the estimator's own noise and which alternatives it scores."""

import torch

__all__ = ["SiteStrategy"]


class SiteStrategy:
    """How an estimator of the ARM family treats one kind of discrete guide site: it draws the
    site's value from its own noise (:meth:`sample`), draws it again from the same noise when an
    upstream substitution changed the site's distribution (:meth:`redraw`), and plans the
    alternatives whose learning signals make the site's gradient (:meth:`plan`).

    Subclasses: :class:`~pyro_relax.infer.arm.ARM`, :class:`~pyro_relax.infer.arm.DisARM`
    (Bernoulli sites); :class:`~pyro_relax.infer.swap.AR`, ``ARS``, ``ARSM``, ``ARSPlus``,
    ``ARSMPlus`` and :class:`~pyro_relax.infer.coupled_family.DisARM_IW`, ``DisARM_SB``,
    ``DisARM_Tree`` (categorical sites). Each is a small class whose pieces (weights, tables)
    can be replaced by a subclass.
    """

    #: the option name of :class:`~pyro_relax.infer.ARSM_ELBO` (e.g. ``"disarm"``)
    name = None
    #: the site kinds it handles (see :class:`~pyro_relax.infer.util.DiscreteSite`)
    kinds = ()

    def check(self, who, name, info, fn):
        """Raises a ``ValueError`` naming the estimator ``who`` and the site if the strategy
        cannot handle it."""

    def sample(self, info):
        """``(value, noise)`` for a site with :class:`~pyro_relax.infer.util.DiscreteSite`
        ``info``."""
        raise NotImplementedError

    def redraw(self, info, noise):
        """The value drawn from ``noise`` under the (re-run) site ``info``."""
        raise NotImplementedError

    def plan(self, info, value, noise, separable):
        """The site's :class:`~pyro_relax.infer.SitePlan`.

        :param bool separable: whether one row may hold a different alternative in each plate
            cell (see :meth:`Alternatives.separable <pyro_relax.infer.Alternatives.separable>`).
        """
        raise NotImplementedError

    def __repr__(self):
        return "{}()".format(type(self).__name__)


def check_categories(strategy, who, name, info, fn):
    """A categorical site needs at least 2 categories."""
    C = info.logits.shape[-1]
    if C < 2:
        raise ValueError(
            "{} cannot handle guide site '{}': a {} with {} category has nothing to estimate "
            "(categorical={!r} needs at least 2 categories); make the site deterministic or "
            "give it more categories.".format(who, name, type(fn).__name__, C, strategy.name)
        )


def uniform_noise(logits, num):
    """``num`` uniforms per variable (the trailing dim of ``logits`` replaced by ``num``)."""
    return logits.new_empty(logits.shape[:-1] + (num,)).uniform_()


def dirichlet_noise(logits):
    """Dirichlet(1) noise of the shape of ``logits``."""
    e = torch.empty_like(logits).exponential_()
    return e / e.sum(-1, keepdim=True)
