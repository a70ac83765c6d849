"""Runs Pyro's own catalogue of valid and invalid model/guide pairs
(``tests/infer/test_valid_models.py`` of pyro-ppl/pyro) with each of our ELBOs in place of
:class:`~pyro.infer.Trace_ELBO`, and prints which cases fail.

Pyro's test file is not shipped with the ``pyro-ppl`` package, so this script needs a checkout
of the Pyro repository (``--pyro-dir``); it never copies Pyro's code. CI runs our own
re-expression of the same program shapes, ``tests/infer/test_catalogue.py``.

Every ``Trace_ELBO`` in the file becomes the chosen ELBO with ``num_particles=2`` (unless the
case sets it), so that the estimators that need two particles apply; the cases written for
``TraceGraph_ELBO``, ``TraceEnum_ELBO`` etc. are deselected.

Example::

    python -m benchmarks.pyro_catalogue --pyro-dir ~/src/pyro --elbo rloo vargrad arm disarm
"""

import argparse
import collections
import os
import sys

import pyro.infer
import pytest

from pyro_relax.infer import ARSM_ELBO, RELAX_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

ELBOS = {
    "rloo": (ReinforceLOO_ELBO, {}),
    "vargrad": (VarGrad_ELBO, {}),
    "arm": (ARSM_ELBO, {"bernoulli": "arm"}),
    "disarm": (ARSM_ELBO, {"bernoulli": "disarm"}),
    "relax": (RELAX_ELBO, {}),
    "relax-neural": (RELAX_ELBO, {"control_variate": "neural"}),
}


def _stand_in(cls, options, collect):
    """A class named ``Trace_ELBO`` (so pytest's ids still say Trace_ELBO) that builds ``cls``
    with two particles by default, and records which tests construct it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("num_particles", 2)
        collect.used.add(collect.current)
        cls.__init__(self, *args, **dict(options, **kwargs))

    return type("Trace_ELBO", (cls,), {"__init__": __init__})


class _Collect:
    def __init__(self):
        self.outcomes = collections.OrderedDict()
        self.used = set()
        self.current = None

    def pytest_runtest_setup(self, item):
        self.current = item.nodeid

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            message = ""
            if report.failed and report.longrepr is not None:
                message = getattr(report.longrepr, "reprcrash", None)
                message = message.message.splitlines()[0] if message else str(report.longrepr)[:200]
            self.outcomes[report.nodeid] = (report.outcome, message)


def run(pyro_dir, name, extra_args=()):
    cls, options = ELBOS[name]
    original = pyro.infer.Trace_ELBO
    collect = _Collect()
    pyro.infer.Trace_ELBO = _stand_in(cls, options, collect)
    cwd = os.getcwd()
    sys.path.insert(0, pyro_dir)
    try:
        os.chdir(pyro_dir)
        for module in [m for m in sys.modules if m == "tests" or m.startswith("tests.")]:
            del sys.modules[module]
        pytest.main(
            [
                "tests/infer/test_valid_models.py",
                "-q",
                "-p",
                "no:cacheprovider",
                "-k",
                "Trace_ELBO or not Elbo",
            ]
            + list(extra_args),
            plugins=[collect],
        )
    finally:
        os.chdir(cwd)
        sys.path.remove(pyro_dir)
        pyro.infer.Trace_ELBO = original
    # only the cases that ran our ELBO count
    return collections.OrderedDict(
        (k, v) for k, v in collect.outcomes.items() if k in collect.used
    )


def main(args):
    pyro_dir = os.path.abspath(os.path.expanduser(args.pyro_dir))
    target = os.path.join(pyro_dir, "tests", "infer", "test_valid_models.py")
    if not os.path.isfile(target):
        raise SystemExit(
            "--pyro-dir: no tests/infer/test_valid_models.py under {}; pass a checkout of "
            "https://github.com/pyro-ppl/pyro".format(pyro_dir)
        )
    summary = []
    for name in args.elbo:
        outcomes = run(pyro_dir, name, args.pytest_args)
        failed = [(k, v[1]) for k, v in outcomes.items() if v[0] == "failed"]
        passed = sum(1 for v in outcomes.values() if v[0] == "passed")
        summary.append((name, passed, len(failed)))
        print("\n== {}: {} passed, {} failed".format(name, passed, len(failed)))
        for nodeid, message in failed:
            print("  FAILED {} :: {}".format(nodeid.split("::")[-1], message))
    print("\n| ELBO | passed | failed |\n|---|---|---|")
    for name, passed, failed in summary:
        print("| {} | {} | {} |".format(name, passed, failed))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pyro_catalogue",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pyro-dir", required=True, help="a checkout of pyro-ppl/pyro")
    parser.add_argument(
        "--elbo", nargs="+", default=list(ELBOS), choices=list(ELBOS), help="ELBOs to run"
    )
    parser.add_argument(
        "--pytest-args", nargs="*", default=[], help="extra arguments passed to pytest"
    )
    main(parser.parse_args())
