"""The discrete-latent VAE CLIs (``bernoulli_vae``, ``categorical_vae``, ``sigmoid_belief_net``,
``ss_vae``) on a tiny idx folder made from scikit-learn's 8x8 digits (each pixel repeated 3 x 3:
on 64 pixels a categorical VAE sits on its bias-only plateau for hundreds of steps): every
model x estimator pair trains with a finite loss and improves the validation ELBO by more than
a nat in 60 seeded steps; the binarized-data loader; one-line errors for a wrong
``--data-dir``, an estimator that does not apply and options that do not apply; ``--resume``
continues from the saved step to the same parameters as one run; the benchmark's table."""

import json
import os
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

from models import bernoulli_vae, categorical_vae, sigmoid_belief_net, ss_vae
from models import vae as vaes
from models.data import binarize, load_binarized_fashion_mnist, read_idx, write_idx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = {
    "bernoulli_vae": bernoulli_vae,
    "categorical_vae": categorical_vae,
    "sigmoid_belief_net": sigmoid_belief_net,
    "ss_vae": ss_vae,
}
#: tiny layer sizes per model (and, for the categorical VAE, a learning rate that gets it off
#: its bias-only plateau within the 60 steps)
SIZES = {
    "bernoulli_vae": ["--latents", "8"],
    "categorical_vae": ["--latents", "8", "--classes", "4", "--hidden", "32",
                        "--learning-rate", "0.03"],
    "sigmoid_belief_net": ["--latents", "6"],
    "ss_vae": ["--latents", "4", "--hidden", "16", "--num-labels", "100"],
}
CLASSES = {
    "bernoulli_vae": bernoulli_vae.BernoulliVAE,
    "categorical_vae": categorical_vae.CategoricalVAE,
    "sigmoid_belief_net": sigmoid_belief_net.SigmoidBeliefNet,
    "ss_vae": ss_vae.SSVAE,
}
#: (model, estimator, extra options): every estimator that applies, and st with a relaxed prior
PAIRS = [(name, estimator, []) for name in MODULES for estimator in CLASSES[name].estimators]
PAIRS += [(name, "st", ["--st-prior", "relaxed"]) for name in MODULES]
#: the coupled categorical estimators with two antithetic pairs
PAIRS += [(name, e, ["--num-pairs", "2"]) for name in ("categorical_vae", "ss_vae")
          for e in vaes.COUPLED]
STEPS = 60


def _args(name, digits_dir, *extra):
    argv = ["--data-dir", digits_dir, "--train-size", "1200", "--batch-size", "20",
            "--learning-rate", "0.01", "--eval-size", "100", "--iw-samples", "5",
            "--no-progress", *SIZES[name], *extra]
    return MODULES[name].make_parser().parse_args(argv)


@pytest.fixture(scope="module")
def initial_elbo(digits_dir):
    """The validation ELBO at initialization (no step), per model."""
    cache = {}

    def get(name):
        if name not in cache:
            pyro.clear_param_store()
            cache[name] = MODULES[name].main(
                _args(name, digits_dir, "--num-steps", "0", "--estimator", "trace"))["valid_elbo"]
        return cache[name]

    return get


# ------------------------------------------------------------------ data
def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a", "b.gz"):
        write_idx(str(tmp_path / name), array)
        back = read_idx(str(tmp_path / name))
        assert back.dtype == np.uint8 and (back == array).all()


def test_binarized_splits(digits_dir):
    data = load_binarized_fashion_mnist(digits_dir, train_size=1200)
    assert data.train.shape == (1200, 576) and data.valid.shape == (300, 576)
    assert data.test.shape == (297, 576) and data.pixels == 576
    assert len(data.train_labels) == 1200 and len(data.test_labels) == 297
    assert 0 <= data.train.min() and data.train.max() <= 1
    assert torch.allclose(data.train_mean, data.train.mean(0))
    bias = data.output_bias()
    assert torch.isfinite(bias).all() and bias.min() >= torch.logit(torch.tensor(0.001)) - 1e-6
    x = binarize(data.train)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert abs(x.mean().item() - data.train.mean().item()) < 0.01  # Bernoulli(intensity)
    assert not torch.equal(x, binarize(data.train))  # dynamic: resampled at every call
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    assert torch.equal(binarize(data.train, g1), binarize(data.train, g2))


def test_missing_files_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_binarized_fashion_mnist(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "apt-get install -y dataset-fashion-mnist" in message


# ------------------------------------------------------------------ every pair trains
@pytest.mark.parametrize("name,estimator,extra", PAIRS,
                         ids=[" ".join([n, e, *x]) for n, e, x in PAIRS])
def test_pair_trains_and_improves(name, estimator, extra, digits_dir, initial_elbo):
    before = initial_elbo(name)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):  # st: the prior scores the quantized value
        metrics = MODULES[name].main(_args(name, digits_dir, "--estimator", estimator,
                                           "--num-steps", str(STEPS), *extra))
    assert metrics["steps"] == STEPS
    for key in ("train_elbo", "valid_elbo", "test_elbo", "test_iw_bound", "ms_per_step"):
        assert np.isfinite(metrics[key]), (key, metrics[key])
    assert all(np.isfinite(v) for _, v, _ in metrics["curve"])
    assert metrics["test_iw_bound"] >= metrics["test_elbo"] - 1.0
    assert metrics["valid_elbo"] > before + 1.0, (before, metrics["valid_elbo"])
    if name == "ss_vae":
        assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_model_evaluations_per_step(digits_dir):
    common = ["--num-steps", "3"]
    got = {e: bernoulli_vae.main(_args("bernoulli_vae", digits_dir, "--estimator", e, *common))
           ["model_evaluations_per_step"] for e in ("trace", "rloo", "disarm", "relax")}
    assert got["trace"] == 1.0 and got["rloo"] == 2.0
    # ARM/DisARM: the sample and its twin; RELAX: 1 + 2 per discrete site; pyro_relax may add
    # a row now and then (a check that the program broadcasts over the alternatives)
    assert 2.0 <= got["disarm"] < 2.5 and 3.0 <= got["relax"] < 3.5, got


def test_categorical_estimators_are_selectable_with_their_evaluations(digits_dir):
    """The ARM family and the coupled estimators of ARSM_ELBO(categorical=...) in the
    categorical VAE: each is the ELBO it names, and costs what its docstring says."""
    assert set(vaes.ARSM_CATEGORICAL) <= set(categorical_vae.CategoricalVAE.estimators)
    assert set(vaes.ARSM_CATEGORICAL) <= set(ss_vae.SSVAE.estimators)
    assert not set(vaes.ARSM_CATEGORICAL) & set(bernoulli_vae.BernoulliVAE.estimators)
    for e in vaes.ARSM_CATEGORICAL:
        elbo = vaes.make_elbo(e, num_pairs=3 if e in vaes.COUPLED else None)
        assert (elbo.categorical.name, elbo.num_pairs, elbo.max_plate_nesting) == (
            e, 3 if e in vaes.COUPLED else 1, 1)
    got = {}
    for e, extra in [("ar", []), ("disarm-iw", []), ("disarm-tree", ["--num-pairs", "2"]),
                     ("arsm", [])]:
        pyro.clear_param_store()
        got[e] = categorical_vae.main(_args("categorical_vae", digits_dir, "--estimator", e,
                                            "--num-steps", "3", *extra))
    evals = {e: m["model_evaluations_per_step"] for e, m in got.items()}
    # AR: the sample only; DisARM: 2m samples (rows that coincide are scored once, and
    # pyro_relax may add a row now and then, a check that the program broadcasts); ARSM: 1 +
    # the distinct swaps of 8 latents of 4 classes in one batched run (at most 1 + 8 x 6)
    assert evals["ar"] < 1.5 and 1.5 < evals["disarm-iw"] < 2.5, evals
    assert 3.0 < evals["disarm-tree"] < 4.5 and 2.0 < evals["arsm"] <= 49.5, evals


def test_protocols_and_per_parameter_optimizer(digits_dir):
    args = _args("bernoulli_vae", digits_dir, "--protocol", "disarm", "--estimator", "rloo",
                 "--num-steps", "2")
    data = vaes.load_data(args)
    bernoulli_vae.apply_protocol(args)
    assert (args.arch, args.prior, args.learning_rate) == ("linear", "learned", 0.01)
    experiment = vaes.Experiment("bernoulli_vae", bernoulli_vae.build, args, data, 2, None)
    experiment.train(2, progress=False)
    store = pyro.get_param_store()
    kinds = {store.param_name(p): type(o).__name__ for p, o in experiment.optim.optim_objs.items()}
    assert kinds["prior$$$logits"] == "SGD"
    assert {v for k, v in kinds.items() if k != "prior$$$logits"} == {"Adam"}
    rodeo = _args("bernoulli_vae", digits_dir, "--protocol", "rodeo", "--hidden", "8")
    bernoulli_vae.apply_protocol(rodeo)
    assert (rodeo.arch, rodeo.prior, rodeo.batch_size) == ("nonlinear", "uniform", 20)
    pyro.clear_param_store()
    metrics = bernoulli_vae.main(_args("bernoulli_vae", digits_dir, "--protocol", "rodeo",
                                       "--hidden", "8", "--estimator", "disarm",
                                       "--num-steps", "5"))
    assert np.isfinite(metrics["test_iw_bound"])
    assert "prior$$$logits" not in pyro.get_param_store()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name,estimator", [
    ("categorical_vae", "arm"), ("categorical_vae", "disarm"), ("bernoulli_vae", "arsm"),
    ("bernoulli_vae", "enum"), ("sigmoid_belief_net", "enum"), ("ss_vae", "disarm"),
])
def test_estimator_that_does_not_apply(name, estimator, digits_dir, capsys):
    with pytest.raises(SystemExit) as info:
        MODULES[name].main(_args(name, digits_dir, "--estimator", estimator))
    message = str(info.value.code)
    assert "\n" not in message and f"--estimator {estimator} does not apply to {name}" in message
    assert "estimators that apply: trace, tracegraph, rloo" in message
    assert "# data:" not in capsys.readouterr().out  # fails before reading data


@pytest.mark.parametrize("extra,expected", [
    (["--estimator", "disarm", "--num-particles", "2"], "--num-particles applies to"),
    (["--estimator", "rloo", "--num-particles", "1"], "--num-particles must be >= 2"),
    (["--estimator", "arm", "--temperature", "0.5"], "--temperature applies to"),
    (["--estimator", "rloo", "--resume"], "--resume needs --out"),
    (["--estimator", "disarm", "--num-pairs", "2"], "--num-pairs applies to no estimator"),
])
def test_options_that_do_not_apply(extra, expected, digits_dir):
    with pytest.raises(SystemExit) as info:
        bernoulli_vae.main(_args("bernoulli_vae", digits_dir, *extra))
    assert expected in str(info.value.code) and "\n" not in str(info.value.code)


@pytest.mark.parametrize("extra,expected", [
    (["--estimator", "arsm", "--num-pairs", "2"],
     "--num-pairs applies to disarm-iw, disarm-sb, disarm-tree, not to --estimator arsm"),
    (["--estimator", "disarm-sb", "--num-pairs", "0"], "--num-pairs must be >= 1"),
    (["--estimator", "ars+", "--num-particles", "2"], "--num-particles applies to"),
])
def test_categorical_options_that_do_not_apply(extra, expected, digits_dir):
    with pytest.raises(SystemExit) as info:
        categorical_vae.main(_args("categorical_vae", digits_dir, *extra))
    assert expected in str(info.value.code) and "\n" not in str(info.value.code)


@pytest.mark.parametrize("name", list(MODULES))
def test_wrong_data_dir(name, tmp_path, capsys):
    args = MODULES[name].make_parser().parse_args(["--data-dir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as info:
        MODULES[name].main(args)
    message = str(info.value.code)
    assert "--data-dir" in message and str(tmp_path / "missing") in message
    assert "\n" not in message and "# data:" not in capsys.readouterr().out


def test_command_line_errors_are_one_line(tmp_path):
    """End to end: a non-applicable estimator exits non-zero with one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "models.categorical_vae", "--estimator", "arm"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "does not apply to categorical_vae" in result.stderr


# ------------------------------------------------------------------ outputs and resume
def _params():
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def test_resume_continues_from_the_saved_step(digits_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    common = ["--estimator", "rloo", "--log-every", "2"]
    straight = bernoulli_vae.main(_args("bernoulli_vae", digits_dir, *common, "--num-steps", "10"))
    expected = _params()

    pyro.clear_param_store()
    first = bernoulli_vae.main(_args("bernoulli_vae", digits_dir, *common, "--num-steps", "6",
                                     "--out", out))
    assert first["steps"] == 6
    for name in ("curve.csv", "curve.png", "metrics.json", "params.pt", "optim.pt", "state.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    capsys.readouterr()

    pyro.clear_param_store()
    resumed = bernoulli_vae.main(_args("bernoulli_vae", digits_dir, *common, "--num-steps", "10",
                                       "--out", out, "--resume"))
    assert "resuming" in capsys.readouterr().out and resumed["steps"] == 10
    assert [row[0] for row in resumed["curve"]] == [2, 4, 6, 8, 10]
    with open(os.path.join(out, "curve.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()] == ["step", "2", "4", "6", "8", "10"]
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["steps"] == 10
    got = _params()
    assert got.keys() == expected.keys()
    for name in got:  # same RNG stream, optimizer state and parameters as one 10-step run
        assert torch.allclose(got[name], expected[name], atol=1e-6), name
    assert resumed["train_elbo"] == pytest.approx(straight["train_elbo"], abs=1e-6)


def test_resume_refuses_another_estimator(digits_dir, tmp_path):
    out = str(tmp_path / "run")
    bernoulli_vae.main(_args("bernoulli_vae", digits_dir, "--estimator", "rloo",
                             "--num-steps", "2", "--out", out))
    with pytest.raises(SystemExit) as info:
        bernoulli_vae.main(_args("bernoulli_vae", digits_dir, "--estimator", "arm",
                                 "--num-steps", "4", "--out", out, "--resume"))
    assert "--estimator rloo" in str(info.value.code)


# ------------------------------------------------------------------ the benchmark
def test_estimators_benchmark_table(digits_dir, capsys):
    from benchmarks import estimators as bench

    args = bench.make_parser().parse_args([
        "--data-dir", digits_dir, "--train-size", "1200", "--num-steps", "8",
        "--estimators", "trace", "rloo", "disarm", "relax", "st", "--grad-samples", "4",
        "--warmup-draws", "1", "--cv-steps", "2", "--eval-size", "50", "--iw-samples", "3",
        "--latents", "6", "--batch-size", "10", "--no-progress", "--seeds", "0", "1",
    ])
    result = bench.main(args)
    lines = result["table"].splitlines()
    assert lines[0].startswith("| estimator | ELBO | evals/step | train ELBO | test bound")
    assert "log10 Var @0" in lines[0] and "log10 Var @8" in lines[0]
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert list(rows) == ["trace", "rloo", "disarm", "relax", "st"]
    assert "`Trace_ELBO(2)`" in rows["trace"] and "| 1.00 ± 0.00 |" in rows["trace"]
    assert "`ARSM_ELBO(bernoulli='disarm')`" in rows["disarm"]
    assert "| 3." in rows["relax"]  # 1 + 2 model evaluations per discrete site
    for seed_rows in result["rows"]:
        for row in seed_rows.values():
            assert all(np.isfinite(v) for v in row["log10_var"].values()), row
    out = capsys.readouterr().out
    assert "threads=1 device=cpu" in out and "storchastic" in out
    assert "train ELBO @ equal evals (steps)" in lines[0]
    # st (1 evaluation per step) is the cheapest: the others at 8 x 1 evaluations
    assert " (8) |" in rows["st"] and " (4) |" in rows["trace"] and " (4) |" in rows["rloo"]


def test_estimators_benchmark_picks_up_the_categorical_estimators(digits_dir):
    from benchmarks import estimators as bench

    args = bench.make_parser().parse_args([
        "--data-dir", digits_dir, "--train-size", "1200", "--model", "categorical_vae",
        "--num-steps", "4", "--estimators", "rloo", "ars+", "arsm+", "disarm-iw", "disarm-tree",
        "--num-pairs", "2", "--grad-samples", "3", "--warmup-draws", "0", "--eval-size", "20",
        "--iw-samples", "2", "--latents", "4", "--hidden", "16", "--batch-size", "10",
        "--no-progress", "--model-args", "--classes", "4",
    ])
    result = bench.main(args)
    rows = {line.split(" | ")[0][2:]: line for line in result["table"].splitlines()[2:]}
    assert list(rows) == ["rloo", "ars+", "arsm+", "disarm-iw", "disarm-tree"]
    assert "`ARSM_ELBO(categorical='arsm+')`" in rows["arsm+"]
    assert "`ARSM_ELBO(categorical='disarm-tree', num_pairs=2)`" in rows["disarm-tree"]
    for row in result["rows"][0].values():
        assert np.isfinite(row["train_elbo_equal_evals"]) and row["evals"] >= 1.0, row
