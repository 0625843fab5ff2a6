"""`dmt ingest` and `dmt serve` log each refused package with its reason, never its values."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from dmt_model.cli import main
from dmt_model.cli._logs import _CurrentStderr, log_to_stderr
from dmt_model.server import ServerPolicy
from dmt_privacy import Field, Schema
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key, save_private_key

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("score", "numeric", bounds=(0, 100_000)),
))
POLICY = ServerPolicy(SCHEMA, min_k=3)
KEY = generate_server_key()
CLASS = pd.Interval(20.0, 29.0, closed="both")
SECRET = 123_456.75  # out of bounds: the package is refused, and this value must not be logged
REFUSAL = "package refused (PATH): bounds: field 'score' holds values outside its bounds"


def _sealed(scores: list[float]) -> bytes:
    package = SharePackage.create(SCHEMA.schema_id, {"age": [CLASS] * len(scores),
                                                     "score": scores}, PrivacyReceipt(k=3))
    return seal_package(package, KEY.public_key())


@pytest.fixture
def server(tmp_path) -> Path:
    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(POLICY.to_json())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.dmt").write_bytes(_sealed([SECRET, 5.0, 6.0]))
    (tmp_path / "in" / "good.dmt").write_bytes(_sealed([4.0, 5.0, 6.0]))
    return tmp_path


def _ingest(server: Path, *options: str) -> int:
    return main(["ingest", str(server / "in"), "--db", str(server / "s.db"),
                 "--key", str(server / "server.key"), "--policy", str(server / "policy.json"),
                 *options])


@pytest.fixture(autouse=True)
def _no_handler_left():
    logger = logging.getLogger("dmt")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_ingest_logs_each_refusal_at_info_by_default(server, capsys):
    assert _ingest(server) == 0
    out, err = capsys.readouterr()
    bad = str(server / "in" / "bad.dmt")
    assert err.splitlines() == [f"dmt ingest: {REFUSAL.replace('PATH', bad)}"]
    assert "123456" not in err and "123,456" not in err
    assert "accepted     1 package(s)" in out
    assert _ingest(server) == 0  # run again: one line again, not one per handler added
    assert capsys.readouterr().err.count("package refused") == 1


def test_ingest_log_level_quiets_it(server, capsys):
    assert _ingest(server, "--log-level", "warning") == 0
    assert capsys.readouterr().err == ""


def test_serve_logs_each_refusal_with_a_time(server, capsys, monkeypatch):
    from fastapi.testclient import TestClient

    import dmt_model.server.service as service

    statuses = []

    def serve_two_packages(app, **options):
        with TestClient(app) as client:
            for name in ("bad.dmt", "good.dmt"):
                sent = client.post("/v1/packages", content=(server / "in" / name).read_bytes(),
                                   headers={"Content-Type": "application/octet-stream"})
                statuses.append(sent.status_code)

    monkeypatch.setattr(service, "run_service", serve_two_packages)
    assert main(["serve", "--db", f"sqlite:///{server / 's.db'}", "--key",
                 str(server / "server.key"), "--policy", str(server / "policy.json")]) == 0
    assert statuses == [400, 201]
    refused = [line for line in capsys.readouterr().err.splitlines() if "refused" in line]
    assert len(refused) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} dmt serve: "
                        + re.escape(REFUSAL.replace("PATH", "<http>")), refused[0]), refused
    assert "123456" not in refused[0]


def test_the_handler_is_replaced_not_added_and_writes_to_the_current_stderr(capsys):
    logger = logging.getLogger("dmt")
    others = [h for h in logger.handlers if not isinstance(h, _CurrentStderr)]
    log_to_stderr("ingest", "info")
    log_to_stderr("ingest", "debug")
    ours = [h for h in logger.handlers if isinstance(h, _CurrentStderr)]
    assert len(ours) == 1 and logger.handlers == others + ours
    assert logger.level == logging.DEBUG
    logging.getLogger("dmt.server.ingest").debug("one line")
    assert capsys.readouterr().err == "dmt ingest: one line\n"
    with pytest.raises(ValueError, match="'loud'"):
        log_to_stderr("ingest", "loud")
