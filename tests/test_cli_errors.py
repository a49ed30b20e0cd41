"""How the CLIs fail: an EdgefaceError is one line and exit 2; anything else is a bug with its traceback.

No models needed: the bad inputs here fail before a model is loaded, and the bug is injected.
"""
import subprocess
import sys

import pytest

from edgeface import errors
from edgeface.errors import BUG_NOTE, EdgefaceError, run_cli


def _run(*args, code=None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "edgeface.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_bad_input_is_one_line(tmp_path):
    for args, named in ((["detect", tmp_path / "a.jpg", "--models", tmp_path / "nowhere"], "nowhere"),
                        (["gallery", "list", "--gallery", tmp_path / "none.db"], "none.db"),
                        (["bench", "latency", "--models", tmp_path / "nowhere", "--no-progress"], "models.json")):
        r = _run(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(("edgeface: error: ", "edgeface bench latency: error: ")) and named in lines[0]


def test_a_missing_key_bug_is_a_traceback_that_says_it_is_a_bug(tmp_path):
    code = ("import edgeface.cli as c; c.cmd_gallery = lambda args: {}['embedder']; "
            f"raise SystemExit(c.main(['gallery', 'list', '--gallery', {str(tmp_path / 'g.db')!r}]))")
    r = _run(code=code)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "KeyError: 'embedder'" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"edgeface: {BUG_NOTE}"
    assert "edgeface: error:" not in r.stderr


def test_run_cli_in_process(capsys):
    class Odd(EdgefaceError, KeyError):
        pass

    def bad_input():
        raise Odd("no person named 'ada'")

    assert run_cli("prog", bad_input) == 2
    assert capsys.readouterr().err == "prog: error: no person named 'ada'\n"  # no KeyError quotes
    with pytest.raises(ValueError) as exc:
        run_cli("prog", lambda: int("x"))
    assert exc.value.__notes__ == [f"prog: {errors.BUG_NOTE}"]


def test_options_outside_their_range_are_edgeface_errors(tmp_path):
    from edgeface import runtime
    from edgeface.detect import tile_windows
    from edgeface.evaluate import PairsFileError, read_pairs

    with pytest.raises(errors.OptionError, match="EDGEFACE_KERNELS"):
        runtime.get_kernels("fastest")
    with pytest.raises(errors.MissingFileError, match="nothing.tflite"):
        runtime.make_interpreter(tmp_path / "nothing.tflite")
    with pytest.raises(PairsFileError, match="pairs.txt"):
        read_pairs(tmp_path / "pairs.txt")
    with pytest.raises(errors.OptionError):
        tile_windows(100, 100, 0)


def test_commands_of_other_parts_are_plugins():
    """The core finds build/prune/bench through entry points and never names them in its imports."""
    from importlib.metadata import entry_points

    from edgeface import cli

    names = {ep.name for ep in entry_points(group=cli.PLUGIN_GROUP)}
    assert names == {"bench", "convert"}
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"build", "prune", "variants", "report", "bench"} <= set(choices)
    assert choices["build"].get_default("func").__module__ == "edgeface.converters.commands"


def test_a_missing_plugin_says_what_to_install(monkeypatch, capsys):
    import importlib.metadata

    from edgeface import cli

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: {})  # no plug-in installed (3.9 shape)
    assert cli.main(["build", "--out", "x", "--count", "3"]) == 2
    err = capsys.readouterr().err
    assert err == "edgeface: error: `edgeface build` is not installed: pip install 'edgeface[convert]'\n"
    assert cli.main(["bench", "latency", "--profile", "quick"]) == 2
    assert "pip install 'edgeface[dev]'" in capsys.readouterr().err
    assert "detect" in cli.build_parser().format_help()
