"""ARM / DisARM for Bernoulli sites; the ARM family (AR, ARS, ARSM, ARS+, ARSM+) and the
coupled estimators (DisARM-IW, DisARM-SB, DisARM-Tree) for categorical sites."""

from .arm import ARM, DisARM
from .coupled_family import DisARM_IW, DisARM_SB, DisARM_Tree
from .discrete_elbo import DiscreteELBO
from .strategy import SiteStrategy
from .swap import AR, ARS, ARSM, ARSMPlus, ARSPlus
from .util import discrete_site_info

__all__ = ["ARSM_ELBO", "BERNOULLI_OPTIONS", "CATEGORICAL_OPTIONS", "COUPLED_OPTIONS"]

#: ``bernoulli=`` option -> strategy class
BERNOULLI_OPTIONS = {"arm": ARM, "disarm": DisARM}
#: ``categorical=`` option -> strategy class (Yin, Yue & Zhou 2019; Dong, Mnih & Tucker 2021)
CATEGORICAL_OPTIONS = {
    "ar": AR, "ars": ARS, "arsm": ARSM, "ars+": ARSPlus, "arsm+": ARSMPlus,
    "disarm-iw": DisARM_IW, "disarm-sb": DisARM_SB, "disarm-tree": DisARM_Tree,
}
#: the ``categorical`` options that couple antithetic samples (they take ``num_pairs``)
COUPLED_OPTIONS = ("disarm-iw", "disarm-sb", "disarm-tree")


class ARSM_ELBO(DiscreteELBO):
    r"""Augment-REINFORCE-(Swap-)Merge estimators for discrete guide sites, and the coupled
    (antithetic) estimators for categorical sites. Each family is a strategy object
    (:class:`~pyro_relax.infer.strategy.SiteStrategy`) that draws a site from its own noise
    and plans the alternatives its gradient needs; the option strings name them:

    - **Bernoulli** sites (logits :math:`\alpha`, any shape, ``.to_event`` allowed):
      ``bernoulli="arm"`` (:class:`~pyro_relax.infer.arm.ARM`) or ``"disarm"``
      (:class:`~pyro_relax.infer.arm.DisARM`); one extra evaluation per site.
    - **Categorical** and **OneHotCategorical** sites (:math:`C \ge 2` categories),
      ``categorical=``: the ARM family ``"ar"``, ``"ars"``, ``"arsm"`` (default), ``"ars+"``,
      ``"arsm+"`` (:mod:`pyro_relax.infer.swap`) or the coupled estimators ``"disarm-iw"``,
      ``"disarm-sb"``, ``"disarm-tree"`` with ``num_pairs`` antithetic pairs
      (:mod:`pyro_relax.infer.coupled_family`).

    A strategy instance may be passed instead of a string (``categorical=ARSMPlus()``,
    ``categorical=DisARM_Tree(num_pairs=3)``), also a subclass with other pieces.

    Here :math:`f = \log p(x, z) - \log q(z)` is the learning signal of the site's plate cell
    (each datapoint's latent uses its own signal, see :class:`DiscreteELBO`). Several discrete
    sites are handled by holding the others at their sample while one is changed; all the
    distinct alternatives of all sites are scored by **one** batched run of the
    :class:`~pyro_relax.infer.Alternatives` engine, without gradients. The ARM family's pseudo
    actions are packed, per plate cell, into rows when the cells are separable (each row then
    serves a different pseudo action in each cell), else one row per swap, every cell swapped.
    Reparameterizable guide sites keep their pathwise gradient; the score part of a partially
    reparameterized site gets REINFORCE (:meth:`DiscreteELBO.score_function_surrogate`).

    **Dependent guides** (``q(z | x, y)`` with ``y`` discrete, a second stochastic layer, AIR's
    sequence of ``z_pres``, also a Python branch on a sample): for each alternative the guide
    is run again from the changed site on, every later site drawn again with common random
    numbers (the same uniform or Dirichlet noise for a discrete site, the same standard normal
    for a Normal site; a fresh draw for other families), so that :math:`f` at an alternative is
    an unbiased estimate of the expected learning signal given that value. A guide whose
    discrete sites come last (a VAE encoder) is not run again.

    The alternatives run batched over a new leftmost dimension, so model and guide should
    broadcast over it (as for ``vectorize_particles=True``). With
    ``vectorize_alternatives=None`` (default) a program that fails to (``.item()``, ``float()``
    or a Python branch on a sampled value) is detected by the failure and its alternatives are
    scored one at a time from then on; ``False`` always does so; ``True`` raises a
    ``ValueError`` naming the site instead.

    References:

    - M. Yin, M. Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
      ICLR 2019.
    - M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
      Backpropagation Through Categorical Variables", ICML 2019.
    - Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables", NeurIPS 2020.
    - Z. Dong, A. Mnih, G. Tucker, "Coupled Gradient Estimators for Discrete Latent
      Variables", NeurIPS 2021.

    :param int num_particles: number of independent estimates to average.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param bernoulli: ``"arm"`` (default), ``"disarm"`` or a strategy for Bernoulli sites.
    :param vectorize_alternatives: ``None`` (batched, one at a time if the program does not
        broadcast), ``True`` (batched or ``ValueError``) or ``False`` (one at a time).
    :param categorical: the estimator for Categorical and OneHotCategorical sites: ``"ar"``,
        ``"ars"``, ``"arsm"`` (default), ``"ars+"``, ``"arsm+"``, ``"disarm-iw"``,
        ``"disarm-sb"``, ``"disarm-tree"`` or a strategy.
    :param int num_pairs: antithetic pairs per categorical site for the coupled options
        (``2 num_pairs`` samples, ``2 num_pairs - 1`` extra evaluations); 1 for the others.
        Bernoulli sites always use one pair.
    :param alternatives: the :class:`~pyro_relax.infer.Alternatives` engine (default: new).
    """

    def __init__(self, num_particles=1, max_plate_nesting=float("inf"), vectorize_particles=False,
                 strict_enumeration_warning=True, retain_graph=None, bernoulli="arm",
                 vectorize_alternatives=None, categorical="arsm", num_pairs=1, alternatives=None):
        self.bernoulli = _strategy("bernoulli", bernoulli, BERNOULLI_OPTIONS, ("bernoulli",))
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError("num_pairs: expected a positive int, got {!r}".format(num_pairs))
        if num_pairs > 1 and categorical not in COUPLED_OPTIONS:
            raise ValueError(
                "num_pairs: {} pairs need a coupled categorical estimator ({}); "
                "categorical={!r} uses one sample".format(
                    num_pairs, ", ".join(repr(o) for o in COUPLED_OPTIONS), categorical))
        pairs = {"num_pairs": num_pairs} if categorical in COUPLED_OPTIONS else {}
        self.categorical = _strategy("categorical", categorical, CATEGORICAL_OPTIONS,
                                     ("categorical", "one_hot"), **pairs)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         retain_graph=retain_graph, vectorize_alternatives=vectorize_alternatives,
                         alternatives=alternatives)
        #: ARSM's distinct pseudo actions on the last call, per categorical site of the ARM
        #: family: per plate cell (``"mean"``, ``"max"``; None when the cells are scored
        #: together) and the alternative rows scored (``"rows"``)
        self.distinct_actions = {}
        self._plans = {}

    @property
    def num_pairs(self):
        """Antithetic pairs per categorical site (1 for the ARM family)."""
        return getattr(self.categorical, "num_pairs", 1)

    def _options(self):
        return "ARSM_ELBO(bernoulli={!r}, categorical={!r})".format(
            self.bernoulli.name or self.bernoulli, self.categorical.name or self.categorical)

    def _strategy_for(self, info):
        return self.bernoulli if info.kind == "bernoulli" else self.categorical

    def sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None:
            raise ValueError(
                "{} cannot handle guide site '{}' with distribution {}: supported "
                "non-reparameterizable sites are Bernoulli, Categorical and OneHotCategorical "
                "(also with .to_event and in plates); use ReinforceLOO_ELBO or VarGrad_ELBO "
                "for other distributions.".format(self._options(), name, type(fn).__name__))
        strategy = self._strategy_for(info)
        strategy.check(self._options(), name, info, fn)
        return strategy.sample(info)

    def redraw_site(self, name, fn, noise):
        info = discrete_site_info(name, fn)
        return None if info is None else self._strategy_for(info).redraw(info, noise)

    def site_plan(self, particle, name):
        if name not in particle.noise:
            return None  # the score part of a reparameterized site: REINFORCE
        site = particle.guide_trace.nodes[name]
        info = discrete_site_info(name, site["fn"])
        separable = self.alternatives.separable(particle, name)
        plan = self._strategy_for(info).plan(info, site["value"], particle.noise[name], separable)
        self._plans[name] = plan
        return plan

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        self._plans = {}
        surrogate = super().surrogate_elbo(particles, model, guide, args, kwargs)
        self.distinct_actions = {}
        for name, plan in self._plans.items():
            if not hasattr(plan, "table"):
                continue  # Bernoulli and coupled plans: no pseudo actions
            counts = plan.counts  # per cell; None when the cells are scored together
            self.distinct_actions[name] = {
                "mean": None if counts is None else counts.double().mean().item(),
                "max": None if counts is None else (int(counts.max()) if counts.numel() else 0),
                "rows": self.alternatives.rows_scored.get(name, 0),
            }
        return surrogate


def _strategy(option, value, choices, kinds, **kwargs):
    if isinstance(value, SiteStrategy):
        if not set(value.kinds) & set(kinds):
            raise ValueError("{}: {!r} handles {} sites, not {}".format(
                option, value, "/".join(value.kinds), "/".join(kinds)))
        return value
    if value not in choices:
        names = list(choices)
        expected = ("'arm' or 'disarm'" if option == "bernoulli"
                    else "one of " + ", ".join(repr(o) for o in names))
        raise ValueError("{}: expected {}, got {!r} (or pass a SiteStrategy)".format(
            option, expected, value))
    return choices[value](**kwargs)
