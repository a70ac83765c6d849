"""Writes the intersphinx inventories under docs/source/_inv/ that the docs build reads offline.

The docs link to Pyro's, PyTorch's, Python's (and SciPy's) documentation through ``sphinx.ext.intersphinx``,
which needs each project's ``objects.inv``. CI builds the docs without network, so the files are
stored in the repository:

- ``python.inv``: the real inventory of Python 3.11, copied from Debian's ``python3.11-doc``
  package (``/usr/share/doc/python3.11/html/objects.inv``) when it is installed or given with
  ``--python-inv``; otherwise the stored file is kept, or, if there is none, a minimal one is
  written from :data:`PYTHON` below.
- ``pyro.inv``, ``torch.inv`` and ``scipy.inv``: minimal inventories (Sphinx's version 2
  format) holding just the names our docstrings and class bases refer to, with their URLs on
  docs.pyro.ai, docs.pytorch.org and docs.scipy.org. Each anchor is the name under which that project's own docs document the
  object (Pyro: ``docs/source/*.rst``; PyTorch: ``docs/source/*.md``), e.g. Pyro documents
  ``pyro.infer.trace_elbo`` with ``automodule``, so ``Trace_ELBO`` lives at
  ``inference_algos.html#pyro.infer.trace_elbo.Trace_ELBO``. The public short names our
  docstrings use (``pyro.infer.Trace_ELBO``) are added as aliases of the same URL.

Every name is checked to import from the installed packages before anything is written, so a
renamed module is caught here. Run from the repository root after adding a cross-reference to
a name that is not listed yet::

    python docs/make_inventories.py
    python -m sphinx -W --keep-going -b html docs/source docs/_build/html
"""

import argparse
import importlib
import os
import shutil
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "source", "_inv")
DEBIAN_PYTHON_INV = "/usr/share/doc/python3.11/html/objects.inv"

# (name, role, uri relative to the project's docs root, aliases)
PYRO = (
    "Pyro",
    "1.9",
    [
        ("pyro.infer.svi.SVI", "class", "inference_algos.html", ["pyro.infer.SVI"]),
        ("pyro.infer.svi.SVI.step", "method", "inference_algos.html", ["pyro.infer.SVI.step"]),
        ("pyro.infer.elbo.ELBO", "class", "inference_algos.html", ["pyro.infer.ELBO"]),
        ("pyro.infer.trace_elbo.Trace_ELBO", "class", "inference_algos.html",
         ["pyro.infer.Trace_ELBO"]),
        ("pyro.infer.tracegraph_elbo.TraceGraph_ELBO", "class", "inference_algos.html",
         ["pyro.infer.TraceGraph_ELBO"]),
        ("pyro.infer.traceenum_elbo.TraceEnum_ELBO", "class", "inference_algos.html",
         ["pyro.infer.TraceEnum_ELBO"]),
        ("pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO", "class", "inference_algos.html",
         ["pyro.infer.TraceMeanField_ELBO"]),
        ("pyro.primitives.plate", "class", "primitives.html", ["pyro.plate"]),
        ("pyro.primitives.sample", "function", "primitives.html", ["pyro.sample"]),
        ("pyro.primitives.param", "function", "primitives.html", ["pyro.param"]),
        ("pyro.primitives.module", "function", "primitives.html", ["pyro.module"]),
        ("pyro.primitives.factor", "function", "primitives.html", ["pyro.factor"]),
        ("pyro.poutine.Trace", "class", "poutine.html", ["pyro.poutine.trace_struct.Trace"]),
        ("pyro.poutine.Trace.compute_log_prob", "method", "poutine.html",
         ["pyro.poutine.trace_struct.Trace.compute_log_prob"]),
        ("pyro.distributions.TorchDistribution", "class", "distributions.html",
         ["pyro.distributions.torch_distribution.TorchDistribution"]),
        ("pyro.distributions.torch_distribution.TorchDistributionMixin", "class",
         "distributions.html", []),
        ("pyro.distributions.TransformedDistribution", "class", "distributions.html",
         ["pyro.distributions.torch.TransformedDistribution"]),
        ("pyro.distributions.RelaxedOneHotCategoricalStraightThrough", "class",
         "distributions.html",
         ["pyro.distributions.relaxed_straight_through.RelaxedOneHotCategoricalStraightThrough"]),
        ("pyro.distributions.OneOneMatching", "class", "distributions.html",
         ["pyro.distributions.one_one_matching.OneOneMatching"]),
        ("pyro.distributions.Bernoulli", "class", "distributions.html",
         ["pyro.distributions.torch.Bernoulli"]),
        ("pyro.distributions.OneHotCategorical", "class", "distributions.html",
         ["pyro.distributions.torch.OneHotCategorical"]),
    ],
)

TORCH = (
    "PyTorch",
    "2",
    [
        ("torch.Tensor", "class", "tensors.html", []),
        ("torch.Size", "class", "size.html", []),
        ("torch.nn.Module", "class", "generated/torch.nn.Module.html",
         ["torch.nn.modules.module.Module"]),
        ("torch.logsumexp", "function", "generated/torch.logsumexp.html", []),
        ("torch.nn.functional.log_softmax", "function",
         "generated/torch.nn.functional.log_softmax.html", []),
        ("torch.distributions.distribution.Distribution", "class", "distributions.html",
         ["torch.distributions.Distribution"]),
        ("torch.distributions.transformed_distribution.TransformedDistribution", "class",
         "distributions.html", ["torch.distributions.TransformedDistribution"]),
        ("torch.distributions.transforms.Transform", "class", "distributions.html", []),
        ("torch.distributions.transforms.StickBreakingTransform", "class", "distributions.html",
         []),
        ("torch.distributions.constraints.Constraint", "class", "distributions.html", []),
        ("torch.distributions.kl.kl_divergence", "function", "distributions.html", []),
        ("torch.distributions.kl.register_kl", "function", "distributions.html", []),
    ],
)

SCIPY = (
    "SciPy",
    "1",
    [
        ("scipy.optimize.linear_sum_assignment", "function",
         "reference/generated/scipy.optimize.linear_sum_assignment.html", []),
    ],
)

# Fallback only: used when Debian's real Python inventory is not available.
PYTHON = (
    "Python",
    "3.11",
    [
        (name, "class", "library/functions.html", [])
        for name in ("bool", "float", "int", "object")
    ]
    + [(name, "class", "library/stdtypes.html", []) for name in ("dict", "list", "str", "tuple")]
    + [
        (name, "exception", "library/exceptions.html", [])
        for name in ("FileNotFoundError", "NotImplementedError", "SystemExit", "TypeError",
                     "ValueError")
    ]
    + [
        ("None", "data", "library/constants.html", []),
        ("typing.NamedTuple", "class", "library/typing.html", []),
        ("typing.Optional", "data", "library/typing.html", []),
        ("numbers.Integral", "class", "library/numbers.html", []),
        ("argparse.ArgumentParser", "class", "library/argparse.html", []),
    ],
)


def _resolve(name):
    """Imports ``name`` (a dotted path, attributes first); raises if it does not exist."""
    if name == "None":
        return None
    import builtins

    parts = name.split(".")
    if len(parts) == 1:
        return getattr(builtins, name)
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


def inventory_bytes(project, version, entries, check=True):
    """The bytes of a Sphinx version 2 ``objects.inv`` with ``entries`` (and their aliases)."""
    lines = []
    for name, role, page, aliases in entries:
        if check:
            for n in [name] + aliases:
                _resolve(n)
        uri = f"{page}#{name}"
        for n in [name] + aliases:
            lines.append(f"{n} py:{role} 1 {uri} -")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(line + "\n" for line in sorted(lines)).encode()
    return header + zlib.compress(body, 9)


def main(args):
    os.makedirs(args.out_dir, exist_ok=True)
    for filename, (project, version, entries) in [
        ("pyro.inv", PYRO),
        ("torch.inv", TORCH),
        ("scipy.inv", SCIPY),
    ]:
        path = os.path.join(args.out_dir, filename)
        with open(path, "wb") as f:
            f.write(inventory_bytes(project, version, entries))
        print(f"wrote {path} ({project}, {sum(1 + len(e[3]) for e in entries)} names)")
    path = os.path.join(args.out_dir, "python.inv")
    if args.python_inv and os.path.isfile(args.python_inv):
        shutil.copyfile(args.python_inv, path)
        print(f"copied {args.python_inv} to {path}")
    elif os.path.isfile(path):
        print(f"kept {path}: {args.python_inv} not found")
    else:
        project, version, entries = PYTHON
        with open(path, "wb") as f:
            f.write(inventory_bytes(project, version, entries))
        print(
            f"wrote a minimal {path}: {args.python_inv} not found (install Debian's "
            "python3.11-doc for the full inventory)"
        )


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python docs/make_inventories.py",
        description="Write the intersphinx inventories that the docs build reads offline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out-dir", default=OUT_DIR, help="folder to write the .inv files to")
    parser.add_argument(
        "--python-inv",
        default=DEBIAN_PYTHON_INV,
        help="Python's real objects.inv to copy (Debian package python3.11-doc)",
    )
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
