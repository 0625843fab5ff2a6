"""The train / export / personalize commands refuse to overwrite and name bad input."""

import pandas as pd
import pytest

from dmt_model.cli import main


def _proxy_files(folder):
    """The Boston proxy split and its schema as files, as a user would pass them."""
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users

    simulate_users(load_boston(), seed=0).proxy.to_csv(folder / "proxy.csv", index=False)
    (folder / "schema.json").write_text(BOSTON_SCHEMA.to_json())
    return ["--data", str(folder / "proxy.csv"), "--schema", str(folder / "schema.json")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    assert main(["train", *_proxy_files(folder), "-o", str(folder / "f.npz"),
                 "--epochs", "5"]) == 0
    assert main(["export", str(folder / "f.npz"), "-o", str(folder / "m.mlmodel"),
                 "--updatable", "--epochs", "10"]) == 0
    return folder


def test_outputs_are_not_replaced_without_force(trained, capsys):
    model = trained / "m.mlmodel"
    before = model.read_bytes()
    assert main(["export", str(trained / "f.npz"), "-o", str(model)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert main(["train", *_proxy_files(trained), "-o", str(trained / "f.npz"),
                 "--epochs", "1"]) == 1


def test_personalize_names_the_records_file(trained, boston, capsys):
    records = trained / "user.csv"
    broken = boston.head(12).copy()
    broken.loc[broken.index[3], "RAD"] = 9
    broken.to_csv(records, index=False)
    before = (trained / "m.mlmodel").read_bytes()
    assert main(["personalize", str(trained / "m.mlmodel"), "--records", str(records)]) == 1
    err = capsys.readouterr().err
    assert "--records" in err and "user.csv" in err and "'RAD'" in err and "9" in err
    assert "np.int64" not in err
    assert (trained / "m.mlmodel").read_bytes() == before
    boston.head(12).to_csv(records, index=False, sep=";")  # the separator is sniffed
    assert main(["personalize", str(trained / "m.mlmodel"), "--records", str(records),
                 "--epochs", "5"]) in (0, 3)


# Until 6 December the command had no --base: a user who personalized again as records
# arrived updated the personal model on its own, each round another test against what the
# last chance update left (README, *Personalizing again as records arrive*).
def test_personalize_again_from_the_installed_version(trained, boston, tmp_path, capsys):
    import shutil

    from dmt_model.personalize import personalize, personalized_from

    installed = trained / "m.mlmodel"
    first, everything = tmp_path / "first.csv", tmp_path / "all.csv"
    boston.head(6).assign(MEDV=lambda f: f["MEDV"] * 1.6).to_csv(first, index=False)  # kept
    boston.head(20).to_csv(everything, index=False)
    personal = tmp_path / "personal.mlmodel"
    shutil.copyfile(installed, personal)
    assert main(["personalize", str(personal), "--records", str(first), "--epochs", "5"]
                ) in (0, 3)
    capsys.readouterr()
    assert personalized_from(personal) is not None  # a personal model: updated on its own, it
    shutil.copyfile(personal, tmp_path / "again.mlmodel")  # warns in the command's words
    main(["personalize", str(tmp_path / "again.mlmodel"), "--records", str(first),
          "--epochs", "5"])
    err = capsys.readouterr().err
    assert "warning:" in err and "Pass --base" in err and "base=" not in err
    expected = tmp_path / "expected.mlmodel"
    shutil.copyfile(personal, expected)
    result = personalize(expected, boston.head(20), base=installed, epochs=5)
    capsys.readouterr()
    status = main(["personalize", str(personal), "--records", str(everything),
                   "--base", str(installed), "--epochs", "5"])
    out = capsys.readouterr().out
    assert status == (0 if result.accepted else 3)
    assert personal.read_bytes() == expected.read_bytes()  # what the call gives, to the byte
    assert ("the personal model is the base version again" in out) is result.reset_to_base
    # a base that is not the version the personal model comes from is refused by name
    other = tmp_path / "other.mlmodel"
    assert main(["export", str(trained / "f.npz"), "-o", str(other), "--updatable",
                 "--version", "2"]) == 0
    before = personal.read_bytes()
    assert main(["personalize", str(personal), "--records", str(everything),
                 "--base", str(other)]) == 1
    err = capsys.readouterr().err
    assert "--base" in err and "other.mlmodel" in err and "version 2" in err
    assert personal.read_bytes() == before


def test_personalize_says_how_many_records_lie_outside_the_bounds(trained, boston, tmp_path,
                                                                 capsys):
    # helper-124: records outside the schema's bounds were trained on without a word, and
    # the copies' message named holdout=, the Python argument, not --holdout
    import shutil

    model = tmp_path / "m.mlmodel"
    shutil.copyfile(trained / "m.mlmodel", model)
    records = tmp_path / "user.csv"
    outside = boston.head(12).copy()
    outside.loc[outside.index[:2], "CRIM"] = 150.0  # past its bounds (0, 100)
    outside.to_csv(records, index=False)
    assert main(["personalize", str(model), "--records", str(records), "--epochs", "5"]
                ) in (0, 3)
    assert "note: 2 of the records hold a number outside" in capsys.readouterr().err
    boston.head(1).pipe(lambda f: f.loc[f.index.repeat(4)]).to_csv(records, index=False)
    assert main(["personalize", str(model), "--records", str(records)]) == 1
    assert "--holdout" in capsys.readouterr().err


def test_train_scores_the_records_held_out_beside_the_mean(tmp_path, capsys):
    """helper-124: `dmt train` printed the training error alone, so a foundation worse than
    predicting the target's mean (randhie) looked fine. It now scores the records early
    stopping held out beside the best prediction that ignores the inputs, and warns when
    the inputs did not help."""
    import numpy as np
    import pandas as pd

    from dmt_privacy.schema import Field, Schema

    schema = Schema((Field("x", "numeric", bounds=(0, 10)),
                     Field("y", "numeric", role="target", bounds=(-100, 100))))
    (tmp_path / "schema.json").write_text(schema.to_json())
    files = ["--data", str(tmp_path / "proxy.csv"), "--schema", str(tmp_path / "schema.json")]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 400)
    learnable = pd.DataFrame({"x": x, "y": 3 * x + rng.normal(0, 1, 400)})
    rng = np.random.default_rng(4)  # 60 records of noise: x says nothing of y
    noise = pd.DataFrame({"x": rng.uniform(0, 10, 60), "y": rng.standard_t(2, 60)})
    for frame, helped in ((learnable, True), (noise, False)):
        frame.to_csv(tmp_path / "proxy.csv", index=False)
        assert main(["train", *files, "-o", str(tmp_path / "f.npz"), "--force",
                     "--early-stopping", "0.1"]) == 0
        out = capsys.readouterr().out
        held = float(out.split("held out to stop training (they chose its epoch): RMSE ")[1]
                     .split(",")[0])
        mean = float(out.split("predicting the mean of the target instead: RMSE ")[1]
                     .split(",")[0])
        assert (held < mean) is helped
        assert ("no better than predicting the mean of the target" in out) is not helped
        # 40 records held out of 400, 6 of 60: a handful says little (helper-128)
        assert ("(only 6 records held out: the two figures above say little" in out) \
            is not helped
    assert main(["train", *files, "-o", str(tmp_path / "f.npz"), "--force",
                 "--early-stopping", "none", "--epochs", "2"]) == 0
    assert "none were held out: this says little" in capsys.readouterr().out
    # by default, a regression on fewer than about 200 records trains every epoch on all
    # of them (helper-128), and a regression of one record trains on it
    for records in (noise, noise.head(1)):
        records.to_csv(tmp_path / "proxy.csv", index=False)
        assert main(["train", *files, "-o", str(tmp_path / "f.npz"), "--force",
                     "--epochs", "2"]) == 0
        out = capsys.readouterr().out
        assert "stopped early" not in out and "none were held out" in out


def test_personalize_says_when_a_diverged_update_trains_again(trained, boston, monkeypatch,
                                                               capsys):
    """helper-126 1.6: an update retried at a lower rate reports its epochs again from a
    second ``training_begin``, and the command's bar counted past its total as if one
    update ran twice as long. The bar starts again and says why (in a log: one line)."""
    import dmt_model.personalize as personalize_module
    from dmt_model.personalize import UpdateEvent

    real = personalize_module.personalize

    def twice(*args, on_event, **kwargs):
        # what an update that diverged on all records reports, then its retry, then the
        # real command's update (which reports nothing more unless it trains a kept one)
        for loss in (1e9, 1.0):
            on_event(UpdateEvent("training_begin", 0, 0, float("nan")))
            for epoch in range(3):
                on_event(UpdateEvent("epoch_end", epoch, 0, loss))
        return real(*args, on_event=on_event, **kwargs)

    monkeypatch.setattr(personalize_module, "personalize", twice)
    records = trained / "again.csv"
    boston.head(12).to_csv(records, index=False)
    model = trained / "again.mlmodel"
    model.write_bytes((trained / "m.mlmodel").read_bytes())
    assert main(["personalize", str(model), "--records", str(records), "--epochs", "3"]) in (0, 3)
    out = capsys.readouterr().out
    assert out.count("personalizing …") == 1
    assert out.count("diverged, did not settle or stalled: personalizing again at another "
                     "rate …") == 1


def test_personalize_says_how_many_records_copy_another(trained, boston, capsys):
    """helper-124: a user's repeated observations (the same inputs and count) trained and
    were scored once, and the command said "on 25 records" of 41 given without a word why.
    The result counts them (``copies``) and the command says so."""
    records = trained / "copies.csv"
    rows = boston.head(12)
    pd.concat([rows, rows.head(5)]).to_csv(records, index=False)  # 5 records again
    model = trained / "copies.mlmodel"
    model.write_bytes((trained / "m.mlmodel").read_bytes())
    assert main(["personalize", str(model), "--records", str(records), "--epochs", "3"]) in (0, 3)
    err = capsys.readouterr().err
    assert "note: 5 of the records copy another" in err


def test_a_personalization_result_counts_the_copies(trained, boston):
    from dmt_model.personalize import personalize

    model = trained / "counted.mlmodel"
    model.write_bytes((trained / "m.mlmodel").read_bytes())
    rows = boston.head(12)
    assert personalize(model, pd.concat([rows, rows.head(3)]), epochs=3).copies == 3
    assert personalize(model, rows, epochs=3).copies == 0
