"""The API reference under docs/: every public name has a directive, the stored intersphinx
inventories match docs/make_inventories.py, and the Sphinx build passes with warnings as
errors (skipped when Sphinx is not installed: ``pip install -e ".[docs]"``)."""

import importlib
import os
import posixpath
import re
import subprocess
import sys
import zlib

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS_SOURCE = os.path.join(REPO_ROOT, "docs", "source")

# module -> the page documenting its __all__
PAGES = {
    "pyro_relax.infer": ("inference.rst", "extending.rst"),
    "pyro_relax.infer.arm": "inference.rst",
    "pyro_relax.infer.swap": "inference.rst",
    "pyro_relax.infer.coupled_family": "inference.rst",
    "pyro_relax.infer.registry": "inference.rst",
    "pyro_relax.infer.control_variates": "inference.rst",
    "pyro_relax.infer.relaxation": "inference.rst",
    "pyro_relax.infer.pseudo_actions": "inference.rst",
    "pyro_relax.infer.coupled": "inference.rst",
    "pyro_relax.infer.util": "extending.rst",
    "pyro_relax.infer.substitution": "extending.rst",
    "pyro_relax.infer.surrogates": "extending.rst",
    "pyro_relax.infer.particle": "extending.rst",
    "pyro_relax.infer.alternatives": "extending.rst",
    "pyro_relax.infer.site_plan": "extending.rst",
    "pyro_relax.infer.discrete_elbo": "extending.rst",
    "pyro_relax.infer.particle_elbo": "extending.rst",
    "pyro_relax.infer.relax": "inference.rst",
    "pyro_relax.infer.vimco": "inference.rst",
    "pyro_relax.infer.arms": "inference.rst",
    "pyro_relax.infer.double_cv": "inference.rst",
    "pyro_relax.infer.rodeo": "inference.rst",
    "pyro_relax.infer.signal_gradient": "extending.rst",
    "pyro_relax.testing": "extending.rst",
    "pyro_relax.distributions": "distributions.rst",
    "pyro_relax.distributions.relaxed_conditioned": "distributions.rst",
    "pyro_relax.ops": "ops.rst",
}
_DIRECTIVE = re.compile(r"^\.\. auto(?:class|function|data|exception|module):: (\S+)", re.M)


def _resolve(target):
    """The object that a directive's target names: attributes first, as Python resolves
    ``pyro_relax.ops.matching`` (the function, not the submodule of the same name)."""
    parts = target.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_every_public_name_is_documented(module_name):
    """Each name in the module's ``__all__`` has an autodoc directive (under that path or
    another path to the same object, e.g. the package's)."""
    pages = PAGES[module_name]
    pages = (pages,) if isinstance(pages, str) else pages
    documented = set()
    for page in pages:
        with open(os.path.join(DOCS_SOURCE, page)) as f:
            documented |= {id(_resolve(target)) for target in _DIRECTIVE.findall(f.read())}
    module = importlib.import_module(module_name)
    missing = [n for n in module.__all__ if id(getattr(module, n)) not in documented]
    assert not missing, f"{pages} lack directives for {missing}"


def _read_inventory_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    assert data.startswith(b"# Sphinx inventory version 2\n")
    return zlib.decompress(data[header_end:]).decode().splitlines()


def test_stored_inventories_match_the_generator():
    """The files under docs/source/_inv are what docs/make_inventories.py writes, and every
    name in them exists in the installed Pyro and PyTorch."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "docs"))
    try:
        make_inventories = importlib.import_module("make_inventories")
    finally:
        sys.path.pop(0)
    for filename, table in [
        ("pyro.inv", make_inventories.PYRO),
        ("torch.inv", make_inventories.TORCH),
        ("scipy.inv", make_inventories.SCIPY),
    ]:
        expected = make_inventories.inventory_bytes(*table)  # imports every name
        stored = _read_inventory_lines(os.path.join(DOCS_SOURCE, "_inv", filename))
        header_end = expected.index(b"compressed using zlib.\n") + len(b"compressed using zlib.\n")
        assert stored == zlib.decompress(expected[header_end:]).decode().splitlines(), filename
    assert _read_inventory_lines(os.path.join(DOCS_SOURCE, "_inv", "python.inv"))


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), DOCS_SOURCE, str(tmp_path / "html")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "html" / "inference.html") as f:
        page = f.read()
    # autodoc ran, and intersphinx resolved a Pyro link from the stored inventory
    assert "ReinforceLOO_ELBO" in page
    assert posixpath.join("https://docs.pyro.ai/en/stable/", "inference_algos.html") in page
