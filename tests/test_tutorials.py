"""
Smoke tests of the tutorial notebooks, as Pyro's ``tests/test_examples.py`` does for its
examples: every notebook in ``tutorials/`` is executed with nbclient with the environment
variable ``CI`` set, so that it runs its ``smoke_test`` sizes.

The kernel is the interpreter running pytest: a temporary kernelspec named ``python3``
pointing at ``sys.executable`` is put first on ``JUPYTER_PATH``, so a fresh virtual
environment (``pip install -e ".[test]"``) needs no ``ipykernel install``, and a
``python3`` kernelspec of another interpreter in the user's Jupyter folders is not used.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
TIMEOUT = 600
MAX_NOTEBOOK_BYTES = 2_000_000


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A ``python3`` kernelspec for this interpreter, and the smoke-test environment."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pyro-relax tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CI", "1")  # smoke_test = "CI" in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel then picks the inline backend
    return "python3"


def execute(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises nbclient.exceptions.CellExecutionError on any error
    return nb


def images(cell):
    return [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def text(cell):
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o["text"])
        elif "text/plain" in o.get("data", {}):
            parts.append(o["data"]["text/plain"])
    return "".join(parts)


def tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def test_tutorials_exist():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_outputs(path):
    """Notebooks are committed executed (with figures) and small."""
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "run all cells before committing"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert sum(len(images(c)) for c in code) >= 1
    assert "smoke test: False" in text(code[0]), "commit the full (non-smoke) run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_runs(path, kernel_env):
    nb = execute(path, kernel_env)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert sum(len(images(c)) for c in code) >= 1, "the notebook drew no figure"
    check = CHECKS.get(path.name)
    if check is not None:
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "smoke test: True" in text(first_code)
        check(nb)


def check_permutations(nb):
    # 1. Sinkhorn: four heat maps; after 20 iterations rows and columns sum to one
    cell = tagged(nb, "sinkhorn-sums")
    assert len(images(cell)) == 1
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]]
            for line in text(cell).splitlines()[1:] if line.strip()}
    assert set(rows) == {0, 1, 5, 20}
    assert max(rows[20]) < 1e-3 and rows[1][0] > rows[5][0] > rows[20][0]

    # zero-temperature limit: the tau = 0.05 sample is close to the matching
    cell = tagged(nb, "gumbel-temperatures")
    assert len(images(cell)) == 1
    errs = [float(line.split("=")[-1]) for line in text(cell).splitlines() if "tau =" in line]
    assert len(errs) == 3 and errs[-1] < 0.05 and errs[0] > errs[-1]

    # 2. sorting: metrics printed, in range, and a heat map
    out = text(tagged(nb, "sorting-metrics"))
    tau = float(out.split("Kendall tau:")[1].split()[0])
    wrong = float(out.split("wrongly placed:")[1].split()[0])
    assert -1 <= tau <= 1 and 0 <= wrong <= 1
    assert len(images(tagged(nb, "sorting-heatmap"))) == 1

    # 3. matching: one Bhattacharyya distance per method, plots of the posteriors
    out = text(tagged(nb, "matching-bd"))
    bds = [float(line.split("=")[-1]) for line in out.splitlines() if "Bhattacharyya" in line]
    assert len(bds) == 3 and all(0 <= bd <= 1 for bd in bds)
    for tag in ("matching-problem", "matching-bars", "matching-means"):
        assert len(images(tagged(nb, tag))) == 1, tag

    # 4. SVI with a GumbelSinkhorn guide in a plate: three inferred permutations
    out = text(tagged(nb, "svi-example"))
    assert "true permutations:" in out and "inferred (matching):" in out
    losses = out.split("ELBO loss: first")[1].split("\n")[0]
    first, last = (float(v) for v in losses.replace(", last", "").split())
    assert last < first


def lines_with(out, marker):
    return [line for line in out.splitlines() if marker in line]


def number_before(line, marker):
    """The number just before ``marker`` in ``line``."""
    return float(line.split(marker)[0].split()[-1].strip(",|"))


def check_swapping_elbos(nb):
    # gradient draws at theta = 0: DisARM is exact (variance 0); the costs per step
    rows = {}
    for line in text(tagged(nb, "bernoulli-gradients")).splitlines()[1:]:
        if line.strip():
            *name, mean, variance, evals, ms = line.split()
            rows[" ".join(name)] = (float(mean), float(variance), float(evals))
    assert set(rows) == {"REINFORCE (Trace_ELBO)", "ReinforceLOO_ELBO(2)", "ARM", "DisARM",
                         "REBAR", "RELAX"}
    assert rows["DisARM"][1] == 0 and abs(rows["DisARM"][0] - 5e-4) < 1e-9
    evals = {name: row[2] for name, row in rows.items()}
    assert evals == {"REINFORCE (Trace_ELBO)": 1, "ReinforceLOO_ELBO(2)": 2, "ARM": 2,
                     "DisARM": 2, "REBAR": 3, "RELAX": 3}
    # the ARSM toy: ARSM's cost is 1 + the distinct pseudo actions (at most C = 30)
    out = text(tagged(nb, "arsm-toy"))
    (arsm,) = lines_with(out, "ARSM_ELBO ")
    assert 1 <= number_before(arsm, "model evaluations") <= 30
    assert lines_with(out, "exact gradient ascent")


def check_bernoulli_vae(nb):
    out = text(tagged(nb, "training"))
    evals = {line.split()[0]: number_before(line, "model evaluations/step")
             for line in lines_with(out, "model evaluations/step")}
    assert evals == {"trace": 1, "rloo": 2, "disarm": 2, "relax": 3}
    for line in lines_with(out, "bound"):
        assert -1000 < float(line.split()[-1]) < 0
    # REINFORCE's encoder-gradient variance is orders of magnitude above the others'
    cell = tagged(nb, "gradient-variance")
    assert len(images(cell)) == 1
    variances = {line.split(":")[0].strip(): [float(v.split(":")[-1].split()[0])
                                              for v in line.split(",")]
                 for line in lines_with(text(cell), "log10 Var")}
    assert set(variances) == {"trace", "rloo", "disarm", "relax"}
    others = max(v for name, vs in variances.items() if name != "trace" for v in vs)
    assert min(variances["trace"]) > others + 1


def check_categorical_vae(nb):
    out = text(tagged(nb, "training"))
    evals = {line.split()[0]: number_before(line, "model evaluations/step")
             for line in lines_with(out, "model evaluations/step")}
    assert set(evals) == {"arsm", "relax", "rloo"}
    assert evals["rloo"] == 2 and evals["relax"] == 3 and 1 < evals["arsm"] <= 46
    cell = tagged(nb, "sharpening")
    assert len(images(cell)) == 1
    calls = [number_before(line, "model evaluations per call")
             for line in lines_with(text(cell), "model evaluations per call")]
    assert len(calls) >= 2 and all(1 <= c <= 46 for c in calls)


def check_extending(nb):
    out = text(tagged(nb, "mixture-training"))
    (arsm,) = lines_with(out, "ARSM_ELBO ")
    (loo,) = lines_with(out, "ReinforceLOO_ELBO(4)")
    assert 1 <= number_before(arsm, "model evaluations/step") <= 4
    assert number_before(loo, "model evaluations/step") == 4
    # RELAX refuses an index-valued Categorical site, and a control variate coupling the cells
    out = text(tagged(nb, "categorical-error"))
    assert "ValueError" in out and "OneHotCategorical" in out
    assert "depends on other cells" in text(tagged(nb, "coupled-error"))
    # the variance comparison: six estimators and their costs
    cell = tagged(nb, "cv-variance")
    assert len(images(cell)) == 1
    rows = lines_with(text(cell), "variance")
    assert len(rows) == 6
    costs = [number_before(line, "model evaluations/step") for line in rows]
    assert costs[:4] == [1, 1, 1, 3]


def check_writing_an_estimator(nb):
    def verdicts(tag):
        return {line.split()[0]: line.split()[1] for line in text(tagged(nb, tag)).splitlines()
                if line.split() and line.split()[1] in ("unbiased", "BIASED")}

    programs = {"one_categorical", "dependent", "coupled_plate"}
    assert verdicts("proof-baseline") == dict.fromkeys(programs, "unbiased")
    assert verdicts("wrong-baseline") == {"one_categorical": "BIASED"}
    assert verdicts("proof-local") == dict.fromkeys(programs, "unbiased")
    assert verdicts("wrong-joint") == {"coupled_plate": "BIASED", "one_categorical": "unbiased"}
    rows = {line.split()[0]: number_before(line.split("Var[grad phi]")[1], "|")
            for line in lines_with(text(tagged(nb, "training")), "Var[grad phi]")}
    assert set(rows) == {"Trace_ELBO", "ReinforceLOO_ELBO(2)", "MovingAverageREINFORCE",
                         "LocalExpectation"}
    assert all(v > 0 for v in rows.values())


CHECKS = {
    "writing_an_estimator.ipynb": check_writing_an_estimator,
    "permutations.ipynb": check_permutations,
    "swapping_elbos.ipynb": check_swapping_elbos,
    "bernoulli_vae.ipynb": check_bernoulli_vae,
    "categorical_vae.ipynb": check_categorical_vae,
    "extending.ipynb": check_extending,
}
