"""`dmt demo` runs the whole loop, as a new user would run it."""

from dmt_model.cli import main


def test_demo_runs_the_whole_loop(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--users", "8"]) == 0
    out = capsys.readouterr().out
    assert "restored it: identical" in out
    assert "8 packages accepted, 0 rejected" in out
    assert "adopted v2" in out and out.count("\n") > 20
    models = sorted(p.name for p in (tmp_path / "demo" / "server" / "models").iterdir())
    assert "foundation-v2.mlmodel" in models and "versions.json" in models
