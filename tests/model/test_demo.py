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


def test_a_check_that_shows_nothing_says_what_it_could_have_shown():
    """Under local DP the demo asks 5 devices at its default 20 users: even all of them
    better off would be shown so with chance 21 % at ε = 1, and the demo says so rather
    than leave "not shown better" to read as "not better". With enough reports to show it
    (40 devices: 0.95) it does not."""
    from types import SimpleNamespace

    from dmt_model.cli.demo import _device_check

    check = {"device_reports": 5.0, "device_reports_share_better": 0.72,
             "device_reports_epsilon": 1.0, "device_reports_confidence": 0.9,
             "device_reports_lower": 0.0, "device_reports_upper": 1.0}
    told = _device_check(SimpleNamespace(v2_validation=check, held_out_devices=5))
    assert "does not show more than half" in told
    assert "Had all 5 been better off" in told and "chance 21%" in told
    shown = _device_check(SimpleNamespace(v2_validation={**check, "devices_better": 1.0},
                                          held_out_devices=5))
    assert "signed again" in shown and "Had all" not in shown
    many = _device_check(SimpleNamespace(v2_validation={**check, "device_reports": 40.0},
                                         held_out_devices=40))
    assert "does not show more than half" in many and "Had all" not in many
