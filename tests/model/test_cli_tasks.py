"""Every task from files, as a user runs it: a text classifier and an image classifier go
through `dmt train`, `dmt export` and `dmt personalize`; image cells are file paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.cli import main
from dmt_privacy.schema import Field, Schema

TEXT_SCHEMA = Schema((Field("note", "text", max_tokens=8),
                      Field("topic", "categorical", "target", categories=("food", "motion"))))
IMAGE_SCHEMA = Schema((Field("photo", "image", shape=(4, 4)),
                       Field("bright", "categorical", "target", categories=(0, 1))))
WORDS = {"food": ["apple", "bread", "soup"], "motion": ["run", "walk", "jump"]}


def _texts(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = rng.choice(list(WORDS), n)
    return pd.DataFrame({"note": [" ".join(rng.choice(WORDS[t], 3)) for t in topics],
                         "topic": topics})


def _images(folder, n: int, seed: int) -> pd.DataFrame:
    """A CSV-ready frame whose photo cells are .npy files beside it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(4, 4)).astype(np.uint8)
        name = f"photo-{seed}-{i}.npy"
        np.save(folder / name, pixels)
        rows.append({"photo": name, "bright": int(pixels.mean() > 127)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("task", ["text", "image"])
def test_train_export_personalize_a_classifier_from_files(task, tmp_path, capsys):
    schema, frames = (TEXT_SCHEMA, (_texts(120, 0), _texts(20, 1))) if task == "text" else (
        IMAGE_SCHEMA, (_images(tmp_path, 120, 0), _images(tmp_path, 20, 1)))
    (tmp_path / "schema.json").write_text(schema.to_json())
    frames[0].to_csv(tmp_path / "proxy.csv", index=False)
    frames[1].to_csv(tmp_path / "user.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "proxy.csv"), "--schema",
                 str(tmp_path / "schema.json"), "-o", str(tmp_path / "f.npz"),
                 "--epochs", "30"]) == 0
    out = capsys.readouterr().out
    assert "Training a classifier" in out and "stopped early on 10%" in out
    assert "accuracy" in out
    assert main(["export", str(tmp_path / "f.npz"), "-o", str(tmp_path / "m.mlmodel"),
                 "--updatable"]) == 0
    assert main(["personalize", str(tmp_path / "m.mlmodel"), "--records",
                 str(tmp_path / "user.csv")]) in (0, 3)  # updated, or kept as it was
    assert "pdated" in capsys.readouterr().out


def test_a_missing_image_file_is_named(tmp_path, capsys):
    (tmp_path / "schema.json").write_text(IMAGE_SCHEMA.to_json())
    pd.DataFrame({"photo": ["nowhere.npy"] * 3, "bright": [0, 1, 0]}).to_csv(
        tmp_path / "proxy.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "proxy.csv"), "--schema",
                 str(tmp_path / "schema.json"), "-o", str(tmp_path / "f.npz")]) == 1
    err = capsys.readouterr().err
    assert "--data" in err and "'photo'" in err and "nowhere.npy" in err
    assert not (tmp_path / "f.npz").exists()
