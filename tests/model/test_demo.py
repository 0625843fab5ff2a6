"""`dmt demo` runs the whole loop, as a new user would run it."""

from dmt_model.cli import main


def test_demo_runs_the_whole_loop(tmp_path, capsys):
    # 4 users (10 s -> 4 s): the loop runs whole, as with the default 20
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--users", "4"]) == 0
    out = capsys.readouterr().out
    assert "restored it: identical" in out
    assert "accepted 4 packages, rejected 0" in out
    assert ("adopted v2" in out or "REFUSED" in out) and out.count("\n") > 20
    assert "kept for" in out and "user-level" in out
    models = sorted(p.name for p in (tmp_path / "demo" / "loop" / "server" / "models").iterdir())
    assert "foundation-v2.mlmodel" in models and "versions.json" in models


def test_demo_never_empties_a_folder_it_did_not_write(tmp_path, capsys):
    precious = tmp_path / "thesis.txt"
    precious.write_text("years of work")
    assert main(["demo", "--workdir", str(tmp_path), "--users", "4"]) == 1
    assert precious.read_text() == "years of work"
    assert "holds files that a demo did not write" in capsys.readouterr().err
