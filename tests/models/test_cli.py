"""The command-line interfaces of ``models``: help text with defaults, the ``python -m`` usage
line, and one ``--data-dir`` that fails loudly (naming the flag and the folder) when wrong."""

import importlib
import os
import subprocess
import sys

import pytest

from models.data import DEFAULT_DATA_DIR

VAE_CLIS = ["bernoulli_vae", "categorical_vae", "sigmoid_belief_net", "ss_vae"]
CLIS = ["toys", "sorting", "matching", "jigsaw"] + VAE_CLIS
DATA_CLIS = ["jigsaw"] + VAE_CLIS  # the CLIs that read Fashion-MNIST
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parser(name):
    return importlib.import_module(f"models.{name}").make_parser()


@pytest.mark.parametrize("name", CLIS)
def test_help_shows_usage_and_defaults(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser(name).parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m models.{name} ")
    assert "(default:" in out
    assert "--data-path" not in out


@pytest.mark.parametrize("name", CLIS)
def test_every_option_has_help(name):
    for action in _parser(name)._actions:
        assert action.help, (name, action.option_strings or action.dest)


@pytest.mark.parametrize("name", CLIS)
def test_data_dir_only_where_data_is_read(name):
    dests = {action.dest for action in _parser(name)._actions}
    assert ("data_dir" in dests) == (name in DATA_CLIS)
    assert "data_path" not in dests
    if name in DATA_CLIS:
        assert _parser(name).parse_args([]).data_dir == DEFAULT_DATA_DIR


def _wrong_data_dirs(tmp_path):
    missing = tmp_path / "missing"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"missing": missing, "file": a_file, "empty": empty}


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
@pytest.mark.parametrize("name", DATA_CLIS)
def test_wrong_data_dir_exits_with_a_clear_message(name, kind, tmp_path, capsys):
    folder = _wrong_data_dirs(tmp_path)[kind]
    module = importlib.import_module(f"models.{name}")
    args = module.make_parser().parse_args(["--data-dir", str(folder)])
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    message = str(exit_info.value.code)
    assert exit_info.value.code not in (0, None)
    assert "--data-dir" in message and str(folder) in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "# data:" not in capsys.readouterr().out


def test_wrong_data_dir_from_the_command_line(tmp_path):
    """End to end, as a user runs it: non-zero exit status, message on stderr."""
    folder = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "models.jigsaw", "--data-dir", str(folder)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--data-dir" in result.stderr and str(folder) in result.stderr
    assert "Traceback" not in result.stderr
