"""``--trainer lightning`` for the tutorial VAEs, end to end through the command line (a
subprocess each: Lightning's ``ddp`` strategy relaunches the command, which must be the model's
CLI, not pytest) on the digits idx folder: with RELAX on two DDP processes the control variate
moves, every parameter is identical on both processes, and a run stopped at a checkpoint and
resumed ends with bit-identical parameters (control variates included) to an uninterrupted
run, and so does ``ddp_spawn``; one process with a non-RELAX estimator trains; the options that cannot work are refused
in one line. The per-estimator gradient checks are in ``tests/infer/test_distributed.py``."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lightning")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(name, digits_dir, out, *extra, check=True):
    cmd = [sys.executable, "-m", f"models.{name}", "--trainer", "lightning",
           "--data-dir", digits_dir, "--train-size", "1200", "--batch-size", "20",
           "--latents", "8", "--eval-size", "100", "--iw-samples", "2", "--no-progress",
           "--save-every", "5", "--out", out, *extra]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _state(out):
    return torch.load(os.path.join(out, "last.ckpt"), map_location="cpu",
                      weights_only=False)["state_dict"]


def test_relax_on_two_ddp_processes_trains_its_control_variate_and_resumes_exactly(
        digits_dir, tmp_path):
    relax = ["--estimator", "relax", "--devices", "2", "--strategy", "ddp"]
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    result = _run("bernoulli_vae", digits_dir, straight, *relax, "--num-steps", "10")
    assert "parameters identical across the 2 processes: True" in result.stdout
    with open(os.path.join(straight, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["steps"] == 10 and metrics["devices"] == 2
    assert metrics["estimator_state_change"] > 0  # the control variate moved
    curve = open(os.path.join(straight, "metrics.csv")).read()
    assert "train_elbo" in curve and "valid_elbo" in curve

    _run("bernoulli_vae", digits_dir, stopped, *relax, "--num-steps", "5")
    result = _run("bernoulli_vae", digits_dir, stopped, *relax, "--num-steps", "10", "--resume")
    assert "parameters identical across the 2 processes: True" in result.stdout
    expected, got = _state(straight), _state(stopped)
    assert got.keys() == expected.keys()
    assert any("estimator_state" in key for key in got)  # the control variates are saved
    for key in got:
        assert torch.equal(got[key], expected[key]), key

    # ddp_spawn's workers train copies of the module: the same run, summarised the same way
    spawned = str(tmp_path / "spawned")
    result = _run("bernoulli_vae", digits_dir, spawned, "--estimator", "relax", "--devices", "2",
                  "--strategy", "ddp_spawn", "--num-steps", "10")
    assert "parameters identical across the 2 processes: True" in result.stdout
    with open(os.path.join(spawned, "metrics.json")) as f:
        spawned_metrics = json.load(f)
    for key in ("steps", "train_elbo", "valid_elbo", "test_elbo", "estimator_state_change",
                "model_evaluations_per_step"):
        assert spawned_metrics[key] == metrics[key], key
    assert metrics["model_evaluations_per_step"] == 3  # RELAX: sample, relaxed z, z~
    for key, value in _state(spawned).items():
        assert torch.equal(value, expected[key]), key


def test_one_process_trains(digits_dir, tmp_path):
    out = str(tmp_path / "one")
    _run("sigmoid_belief_net", digits_dir, out, "--estimator", "disarm", "--num-steps", "6")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["steps"] == 6 and metrics["estimator_state_change"] is None
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train_elbo", "valid_elbo"))


@pytest.mark.parametrize("name, extra, expected", [
    ("ss_vae", ["--num-labels", "100"], "not supported; use --trainer svi"),
    ("bernoulli_vae", ["--devices", "3"], "must split evenly over --devices 3"),
])
def test_refusals(name, extra, expected, digits_dir, tmp_path):
    result = _run(name, digits_dir, str(tmp_path / "x"), "--num-steps", "2", *extra, check=False)
    assert result.returncode != 0 and expected in result.stderr
    assert "Traceback" not in result.stderr
