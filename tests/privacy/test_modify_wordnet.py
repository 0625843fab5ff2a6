"""WordNet provisioning: the lexnames table, an idempotent copy, clear errors."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

from dmt_privacy.errors import MissingDependencyError
from dmt_privacy.modify import wordnet
from dmt_privacy.modify.wordnet import WORDNET_FILES, find_wordnet, install_wordnet, load_wordnet

POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def test_lexnames_package_data_is_the_lexnames_5wn_table():
    text = resources.files("dmt_privacy").joinpath("data/wordnet_lexnames").read_text("ascii")
    rows = [line.split("\t") for line in text.splitlines()]
    assert len(rows) == 45
    for i, (number, name, pos) in enumerate(rows):
        assert number == f"{i:02d}"
        assert int(pos) == POS_NUMBER[name.split(".")[0]]
    assert rows[0] == ["00", "adj.all", "3"]
    assert rows[18][1] == "noun.person" and rows[44] == ["44", "adj.ppl", "3"]
    # and nltk reads exactly these names
    assert load_wordnet()._lexnames == [r[1] for r in rows] or \
        (find_wordnet() / "corpora" / "wordnet.zip").is_file()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A WordNet database without lexnames, as Debian's /usr/share/wordnet is."""
    found = find_wordnet() / "corpora" / "wordnet"
    if not found.is_dir():
        pytest.skip("WordNet is provisioned as a zip; no database files to copy")
    src = tmp_path_factory.mktemp("wordnet-src")
    for name in WORDNET_FILES:
        shutil.copyfile(found / name, src / name)
    return src


def test_install_copies_writes_lexnames_and_is_idempotent(source, tmp_path, capsys):
    root = install_wordnet(tmp_path / "nltk_data", source=source, download=False)
    dest = root / "corpora" / "wordnet"
    for name in (*WORDNET_FILES, "lexnames"):
        assert (dest / name).is_file() and not (dest / name).is_symlink()
    assert (dest / "lexnames").read_text() == \
        resources.files("dmt_privacy").joinpath("data/wordnet_lexnames").read_text()
    stamp = (dest / "data.noun").stat().st_mtime_ns
    install_wordnet(root, source=source, download=False)
    assert (dest / "data.noun").stat().st_mtime_ns == stamp
    assert "already provisioned" in capsys.readouterr().out
    reader = load_wordnet(root)
    assert reader.get_version() == "3.0"
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert find_wordnet(root) == root


def test_cli_install_and_check(source, tmp_path, capsys):
    target = tmp_path / "data"
    assert wordnet.main(["install", str(target), "--source", str(source), "--no-download"]) == 0
    assert wordnet.main(["check", str(target)]) == 0
    assert "WordNet 3.0 readable" in capsys.readouterr().out
    assert wordnet.main(["check", str(tmp_path / "none")]) == 1
    assert "make wordnet" in capsys.readouterr().err


def test_a_source_without_wordnet_is_refused_with_instructions(tmp_path):
    with pytest.raises(MissingDependencyError) as info:
        install_wordnet(tmp_path / "out", source=tmp_path, download=False)
    assert "source=" in str(info.value) and "data.noun" in str(info.value)


def test_no_system_copy_and_no_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(wordnet, "SYSTEM_SOURCES", (str(tmp_path / "nowhere"),))
    with pytest.raises(MissingDependencyError) as info:
        install_wordnet(tmp_path / "out", download=False)
    message = str(info.value)
    assert "nowhere" in message and "nltk.download" in message


def test_search_order_puts_explicit_dir_then_nltk_data_env_first(tmp_path, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "env"))
    paths = wordnet.search_paths(tmp_path / "mine")
    assert paths[:2] == [tmp_path / "mine", tmp_path / "env"]
    assert Path.cwd() / "nltk_data" in paths


def test_broken_wordnet_data_is_skipped_or_named_never_a_traceback(tmp_path, monkeypatch):
    """A corrupt wordnet.zip raised BadZipFile, an empty data.noun an AttributeError in the
    middle of a transform, and a broken root first on NLTK_DATA hid a good one after it
    (helper-71)."""
    good = find_wordnet()
    zipped = tmp_path / "zipped"
    (zipped / "corpora").mkdir(parents=True)
    (zipped / "corpora" / "wordnet.zip").write_bytes(b"not a zip")
    empty = tmp_path / "empty"
    shutil.copytree(good / "corpora" / "wordnet", empty / "corpora" / "wordnet")
    (empty / "corpora" / "wordnet" / "data.noun").write_bytes(b"")
    for broken in (zipped, empty):
        with pytest.raises(MissingDependencyError, match=str(broken)):
            load_wordnet(broken)
        monkeypatch.setenv("NLTK_DATA", f"{broken}:{good}")
        assert find_wordnet() == good


def test_a_zip_that_holds_no_wordnet_does_not_hide_one_that_does(tmp_path, monkeypatch):
    """A valid zip without WordNet's files passed the zip check and hid the good copy after it
    (helper-72)."""
    import zipfile

    good = find_wordnet()
    other = tmp_path / "other"
    (other / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(other / "corpora" / "wordnet.zip", "w") as archive:
        archive.writestr("README", "not wordnet")
    monkeypatch.setenv("NLTK_DATA", f"{other}:{good}")
    assert find_wordnet() == good
