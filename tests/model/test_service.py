"""The HTTP ingestion service: statuses, OpenAPI, the model endpoint, races, load,
faults (service killed, database restarted) and hostile input, on SQLite and PostgreSQL.

Loads here are small and bounded (500 packages, 10 clients); benchmarks/server_load.py
runs 10,000 packages from 50 clients with the same client and checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import importlib
import os
import select
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from test_ingest import KEY, POLICY, package

from dmt_model.cli import serve as cli_serve
from dmt_model.server import SharedStore, connect
from dmt_model.server.service import PackageIngestor, ServiceConfig, create_app
from dmt_privacy.package import seal_package
from dmt_privacy.seal import ENVELOPE_OVERHEAD, save_private_key

ingest_module = importlib.import_module("dmt_model.server.ingest")  # the module, not ingest()

LINUX = sys.platform.startswith("linux")


#: A policy whose packages fit a 4 KiB body (the service refuses a body limit below its own).
SMALL = dataclasses.replace(POLICY, max_bytes=4096 - ENVELOPE_OVERHEAD)


@pytest.fixture
def client(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 'server.db'}", KEY, SMALL,
                     config=ServiceConfig(max_body_bytes=4096))
    with TestClient(app) as c:
        yield c


def post(client, body: bytes, **headers):
    return client.post("/v1/packages", content=body,
                       headers={"Content-Type": "application/octet-stream", **headers})


def test_statuses_and_bodies_say_no_more(client):
    sealed = seal_package(package(1), KEY.public_key())
    first = post(client, sealed)
    assert first.status_code == 201 and first.json() == {"status": "accepted"}
    again = post(client, sealed)
    assert again.status_code == 409 and again.json() == {"status": "replay"}
    low_k = seal_package(package(2, k=2), KEY.public_key())
    tampered = bytearray(seal_package(package(3), KEY.public_key()))
    tampered[-1] ^= 1
    for body in (low_k, bytes(tampered), b"garbage", b""):
        r = post(client, body)
        assert r.status_code == 400 and r.json() == {"status": "invalid"}, body[:10]
    big = post(client, b"\0" * 5000)
    assert big.status_code == 413 and big.json() == {"status": "too large"}
    chunked = client.post("/v1/packages", content=iter([b"\0" * 1000] * 10))
    assert chunked.status_code == 413
    assert client.get("/v1/health").json() == {"status": "ok"}
    store = SharedStore(client.app.state.ingestor.engine, KEY)
    assert store.counts()["packages"] == 1


def test_requests_in_flight_beyond_the_limit_get_503(client):
    from dmt_model.server.service import InFlightLimit

    limited = InFlightLimit(client.app, 1)
    limited.in_flight = 1  # one request already in flight
    with TestClient(limited) as c:
        r = c.get("/v1/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    limited.in_flight = 0
    with TestClient(limited) as c:
        assert c.get("/v1/health").status_code == 200


def test_the_policy_is_served_as_signed(client):
    r = client.get("/v1/policy")
    assert r.status_code == 200 and r.content == SMALL.to_json().encode()
    assert client.get("/v1/models/latest/release").status_code == 404  # no registry


def test_the_service_refuses_a_body_limit_below_the_policys_package_limit(tmp_path):
    """Found in review (helper-48): devices size their packages by the signed policy's
    max_bytes before their ledger is charged, and the service answered 413 to packages
    the policy allowed (a 64 MiB policy behind a 1 MiB body limit, both defaults). The
    defaults now agree, and a body limit below the policy's is refused at start."""
    from dmt_model.server.policy import DEFAULT_MAX_BYTES
    from dmt_model.server.service import DEFAULT_MAX_BODY_BYTES
    from dmt_privacy.errors import ValidationError

    assert DEFAULT_MAX_BYTES + ENVELOPE_OVERHEAD == DEFAULT_MAX_BODY_BYTES
    create_app(f"sqlite:///{tmp_path / 'a.db'}", KEY, POLICY)  # the defaults agree
    big = dataclasses.replace(POLICY, max_bytes=4 * 2**20)
    with pytest.raises(ValidationError, match="max_body_bytes.*lower the policy's max_bytes"):
        create_app(f"sqlite:///{tmp_path / 'b.db'}", KEY, big)
    assert not (tmp_path / "b.db").exists()  # refused before the database is touched
    create_app(f"sqlite:///{tmp_path / 'c.db'}", KEY, big,
               config=ServiceConfig(max_body_bytes=4 * 2**20 + ENVELOPE_OVERHEAD))


def test_openapi_document(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    post_op = doc["paths"]["/v1/packages"]["post"]
    assert "application/octet-stream" in post_op["requestBody"]["content"]
    assert {"201", "400", "409", "413", "503"} <= set(post_op["responses"])
    assert {"/v1/models/latest", "/v1/health"} <= set(doc["paths"])


def test_latest_model(tmp_path, foundation, simulation, shifted):
    from dmt_model.server.retrain import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    db = f"sqlite:///{tmp_path / 's.db'}"
    with TestClient(create_app(db, KEY, POLICY, models=registry.folder)) as c:
        assert c.get("/v1/models/latest").status_code == 404
        registry.publish(foundation, trained_on={"proxy": len(simulation.proxy)})
        registry.publish(shifted(foundation, 0.01), trained_on={"proxy": len(simulation.proxy)})
        r = c.get("/v1/models/latest")
        assert r.status_code == 200 and r.headers["x-dmt-model-version"] == "2"
        assert r.content == (registry.folder / "foundation-v2.mlmodel").read_bytes()
        cached = c.get("/v1/models/latest", headers={"If-None-Match": r.headers["etag"]})
        assert cached.status_code == 304
    with TestClient(create_app(db, KEY, POLICY)) as c:
        assert c.get("/v1/models/latest").status_code == 404


def test_database_down_is_retryable(tmp_path, monkeypatch):
    app = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY)
    from sqlalchemy.exc import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(ingest_module, "write_prepared", down)
    with TestClient(app) as c:
        r = post(c, seal_package(package(1), KEY.public_key()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_concurrent_posts_of_one_package_store_it_once(db_url):
    """Two writers (as two service processes) both checked one package before either wrote:
    the insert-or-nothing on its id gives one 201 and one 409."""
    ingestors = [PackageIngestor(db_url, KEY, POLICY) for _ in range(2)]
    sealed = seal_package(package(7), KEY.public_key())
    barrier = threading.Barrier(2, timeout=10)
    outcomes = []

    def post_once(ingestor):
        ready = ingestor.check(sealed)
        barrier.wait()  # both are past every check, neither has written
        outcomes.append(ingestor.finish(ready, ingestor.submit(ready).result()))

    threads = [threading.Thread(target=post_once, args=(i,)) for i in ingestors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted((o.status, o.replay) for o in outcomes) == [("accepted", False),
                                                              ("rejected", True)]
    assert SharedStore(ingestors[0].engine, KEY).counts()["packages"] == 1


def test_concurrent_ingestion_shares_classes_without_loss(db_url):
    """Two ingestors (as two service processes: two writers) racing to create the same new
    classes and to update their counters: retried, counted exactly."""
    ingestors = [PackageIngestor(db_url, KEY, POLICY) for _ in range(2)]
    packages = [package(i, n=4) for i in range(40)]
    sealed = [seal_package(p, KEY.public_key()) for p in packages]
    outcomes = []
    lock = threading.Lock()

    def work(ingestor, chunk):
        for body in chunk:
            o = ingestor(body)
            with lock:
                outcomes.append(o)

    threads = [threading.Thread(target=work, args=(ingestors[i % 2], sealed[i::4] + sealed[:5]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    accepted = [o for o in outcomes if o.status == "accepted"]
    assert len(accepted) == 40 and len({o.package_id for o in accepted}) == 40
    assert all(o.replay for o in outcomes if o.status != "accepted")
    counts = SharedStore(ingestors[0].engine, KEY).counts()
    assert counts["packages"] == 40 and counts["records"] == 160


# --- the service as a process: load, faults, hostile input ---------------------------------
@pytest.fixture
def files(tmp_path, server_load):
    key = tmp_path / "server.key"
    save_private_key(KEY, key)
    policy = tmp_path / "policy.json"
    policy.write_text(server_load.POLICY.to_json())
    return key, policy


def _load(server_load, db_url, files, tmp_path, *, n, clients, faults=(), extra=()):
    envelopes = server_load.make_envelopes(n, KEY.public_key(), seed=n)
    service = server_load.ServiceProcess(db_url, *files, log=tmp_path / "serve.log",
                                         extra=extra).start()
    try:
        actions = [(at, service.restart if what == "service" else what)
                   for at, what in faults]
        result = server_load.run_load(service.url, envelopes, clients=clients, deadline=120,
                                      faults=actions)
    finally:
        service.stop()
    checks = server_load.check_exactly_once(result, server_load.stored(db_url), envelopes, 3)
    print(f"\n{db_url.split(':')[0]}: {result.packages_per_second} packages/s, "
          f"latency {result.latency_ms}, statuses {result.statuses}, "
          f"connection errors {result.connection_errors}")
    return result, checks


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "0"])  # 0: checked and written in the event loop
def test_load_every_accepted_package_stored_once(db_url, files, tmp_path, server_load, threads):
    result, checks = _load(server_load, db_url, files, tmp_path, n=500, clients=10,
                           extra=["--threads", threads])
    assert all(checks.values()), checks
    assert result.statuses == {"201": 500}
    assert result.latency_ms["p99"] > 0 and result.packages_per_second > 0


@pytest.mark.slow
def test_service_killed_and_restarted_mid_load(db_url, files, tmp_path, server_load):
    result, checks = _load(server_load, db_url, files, tmp_path, n=500, clients=10,
                           faults=[(0.3, "service")])
    assert all(checks.values()), checks
    assert result.connection_errors > 0  # the kill was felt by clients, who retried
    assert set(result.statuses) <= {"201", "409", "503"}


@pytest.mark.slow
def test_database_restarted_mid_load(postgres_url, postgres_ctl, files, tmp_path, server_load):
    result, checks = _load(server_load, postgres_url, files, tmp_path, n=500, clients=10,
                           faults=[(0.4, server_load.pg_restart(postgres_ctl))])
    assert all(checks.values()), checks
    assert set(result.statuses) <= {"201", "409", "503"}
    assert result.statuses.get("503", 0) > 0  # clients were told to retry, and did


def _raw(port: int, data: bytes, *, pace: float = 0.0, chunks: int = 1,
         timeout: float = 10.0) -> int:
    """Send raw bytes (optionally slowly, in pieces); the status answered, 0 if closed silently."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            if select.select([s], [], [], 0)[0]:
                break  # the service answered (or closed) before the end: read it
            try:
                s.sendall(data[i:i + step])
            except OSError:
                break
            if pace:
                time.sleep(pace)
        try:
            head = s.recv(64)
        except OSError:
            return 0
    parts = head.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="measures the service's memory in /proc")
def test_hostile_input_rejected_without_memory_growth(tmp_path, files, server_load):
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    key, policy = files  # packages of at most the 64 KiB body (the service refuses less)
    policy.write_text(dataclasses.replace(server_load.POLICY,
                                          max_bytes=65536 - ENVELOPE_OVERHEAD).to_json())
    service = server_load.ServiceProcess(
        db_url, key, policy, extra=["--max-body-bytes", "65536", "--body-timeout", "1"]).start()
    port = service.port
    header = (b"POST /v1/packages HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/octet-stream\r\n")
    oversize_declared = header + b"Content-Length: 104857600\r\n\r\n" + b"\0" * 65536
    chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
    oversize_chunked = header + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 16
    garbage = header + b"Content-Length: 60000\r\n\r\n" + os.urandom(60000)
    slow_body = header + b"Content-Length: 1000\r\n\r\n" + b"\0" * 999
    slow_headers = header + b"X-Padding: " + b"a" * 400

    def round_of_abuse() -> dict[str, set[int]]:
        seen = {
            "oversize declared": {_raw(port, oversize_declared) for _ in range(25)},
            "oversize chunked": {_raw(port, oversize_chunked, chunks=16) for _ in range(25)},
            "garbage": {_raw(port, garbage) for _ in range(25)},
        }
        # Ten of each at once, the slow ones waiting out the 1 s timeouts side by side.
        at_once = {"not http": lambda: _raw(port, os.urandom(4096)),
                   "slow body": lambda: _raw(port, slow_body, pace=0.1, chunks=40),
                   "slow headers": lambda: _raw(port, slow_headers, pace=0.1, chunks=40)}
        with ThreadPoolExecutor(max_workers=10 * len(at_once)) as pool:
            futures = {kind: [pool.submit(send) for _ in range(10)]
                       for kind, send in at_once.items()}
        return seen | {kind: {f.result(timeout=30) for f in sent}
                       for kind, sent in futures.items()}

    try:
        round_of_abuse()  # warm up: every code path has run once
        before = service.rss_bytes()
        for _ in range(4):
            seen = round_of_abuse()
        after = service.rss_bytes()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/packages", body=seal_package(package(1), KEY.public_key()))
        still_serving = conn.getresponse().status
        conn.close()
    finally:
        service.stop()
    print(f"\nservice RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB after 4 rounds "
          f"of 115 hostile requests; statuses {seen}")
    assert seen["oversize declared"] == {413}
    assert seen["oversize chunked"] == {413}
    assert seen["garbage"] == {400}
    assert seen["not http"] <= {400, 0}
    assert seen["slow body"] == {408}
    assert seen["slow headers"] == {0}  # closed without a word, after the header timeout
    assert after - before < 16 * 2**20
    assert still_serving == 400  # a package of the test_ingest schema: refused, yet answered


def test_cli_serve_parser():
    parser = argparse.ArgumentParser(prog="dmt")
    cli_serve.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--db", "sqlite:///x.db", "--key", "k"])
    assert args.host == "127.0.0.1" and args.func is cli_serve.run_serve


def test_serve_refuses_a_key_that_does_not_fit_the_database(tmp_path):
    from dmt_privacy.seal import generate_server_key

    db = f"sqlite:///{tmp_path / 's.db'}"
    create_app(db, KEY, POLICY)
    with pytest.raises(Exception, match="cannot be unwrapped"):
        create_app(db, generate_server_key(), POLICY)
    assert connect(db).dialect.name == "sqlite"



# --- the raw route of POST /v1/packages (PackageRoute) ---------------------------------------
def _statuses(c, sealed: bytes) -> list[int]:
    """good, replay, garbage, empty, too large declared, too large streamed."""
    return [post(c, sealed).status_code, post(c, sealed).status_code,
            post(c, b"garbage").status_code, post(c, b"").status_code,
            post(c, b"\0" * 5000).status_code,
            c.post("/v1/packages", content=iter([b"\0" * 1000] * 10)).status_code]


def test_the_raw_route_answers_as_the_fastapi_route(tmp_path):
    """PackageRoute serves POST /v1/packages itself; the FastAPI app alone (which declares the
    route for the OpenAPI document) answers the same codes and bodies."""
    from dmt_model.server.service import PackageRoute

    config = ServiceConfig(max_body_bytes=4096)
    seen = []
    for i, alone in enumerate((False, True)):
        app = create_app(f"sqlite:///{tmp_path / f's{i}.db'}", KEY, SMALL, config=config)
        assert isinstance(app, PackageRoute) and app.state is app.fastapi.state
        with TestClient(app.fastapi if alone else app) as c:
            sealed = seal_package(package(11), KEY.public_key())
            seen.append(_statuses(c, sealed))
            r = post(c, sealed)
            assert r.json() == {"status": "replay"}
            assert r.headers["content-type"] == "application/json"
    assert seen[0] == seen[1] == [201, 409, 400, 400, 413, 413]


def test_the_raw_route_times_out_a_slow_body_and_a_vanished_client(tmp_path):
    import asyncio

    app = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY,
                     config=ServiceConfig(body_timeout=0.2))
    scope = {"type": "http", "method": "POST", "path": "/v1/packages",
             "headers": [(b"content-length", b"100")]}

    async def slow():
        await asyncio.sleep(5)
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def gone():
        return {"type": "http.disconnect"}

    parts = iter([{"type": "http.request", "body": b"\0" * 50, "more_body": True},
                  {"type": "http.request", "body": b"\0" * 50, "more_body": False}])

    async def in_two_parts():
        return next(parts)

    async def answers():
        return [(await app.answer(scope, receive))[0] for receive in (slow, gone, in_two_parts)]

    started = time.monotonic()
    assert asyncio.run(answers()) == [408, 400, 400]  # the last: two parts, garbage
    assert time.monotonic() - started < 3
    assert app.state.ingestor.refusals["unreadable"] == 1


def test_a_batch_is_answered_once_after_its_commit_a_failing_package_alone(tmp_path, monkeypatch):
    """BatchIngest checks and writes a batch in one thread and one transaction; a package
    that makes the write fail is retried alone and fails alone; every answer comes after
    the commit, in one delivery."""
    from dmt_model.server.ingest import BatchIngest, Ingestor

    ingestor = Ingestor(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY)
    packages = [package(20 + i) for i in range(5)]
    bad = packages[2].package_id
    real_write = ingest_module.write_prepared
    groups = []

    def write(conn, group, *args):
        groups.append([p.package_id for p in group])
        if any(p.package_id == bad for p in group):
            raise RuntimeError("disk on fire")
        return real_write(conn, group, *args)

    monkeypatch.setattr(ingest_module, "write_prepared", write)
    deliveries = []

    def deliver(results):  # what the database holds when the answers go out
        deliveries.append((results, SharedStore(ingestor.engine, KEY).counts()["packages"]))

    batch = BatchIngest(ingestor, deliver)
    bodies = [seal_package(p, KEY.public_key()) for p in packages] + [b"garbage"]
    results = batch.run([(body, "<test>", i) for i, body in enumerate(bodies)])
    deliver(results)
    assert len(groups[0]) == 5 and groups[1:] == [[p.package_id] for p in packages]
    by_tag = dict(results)
    assert isinstance(by_tag[2], RuntimeError) and by_tag[5].status == "rejected"
    assert [by_tag[i].status for i in (0, 1, 3, 4)] == ["accepted"] * 4
    assert deliveries[0][1] == 4  # answered after the commit
    for i in range(3):  # and through the threads: one delivery per batch
        batch.submit(seal_package(package(40 + i), KEY.public_key()), i)
    deadline = time.monotonic() + 30
    while sum(len(r) for r, _ in deliveries[1:]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(o.status for r, _ in deliveries[1:] for _, o in r) == ["accepted"] * 3
    assert len(deliveries) - 1 == batch.batches


@pytest.mark.parametrize("threads", [1, 0])
def test_a_round_of_requests_is_one_batch_in_one_transaction(tmp_path, threads):
    """The bodies that arrive in one round of the event loop go to the ingest thread in one
    hand-over (one wake-up, one batch, not one wake-up a body), or with ingest_threads=0
    are checked and written by the loop itself with no thread; either way one transaction
    and the same answers (a duplicate in the batch is a replay, garbage invalid)."""
    import asyncio

    route = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY,
                       config=ServiceConfig(ingest_threads=threads))
    sealed = [seal_package(package(60 + i), KEY.public_key()) for i in range(5)]
    bodies = [*sealed, sealed[0], b"garbage"]

    async def answer(body: bytes) -> int:
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/v1/packages",
                 "headers": [(b"content-length", str(len(body)).encode())]}
        return (await route.answer(scope, receive))[0]

    async def round_of_requests():
        return await asyncio.gather(*(answer(b) for b in bodies))

    before = {t.name for t in threading.enumerate()}
    assert asyncio.run(round_of_requests()) == [201] * 5 + [409, 400]
    assert route.state.ingestor.writer.groups == 1  # one transaction for the round
    if threads:
        assert (route.batch.batches, route.batch.bodies) == (1, 7)
    else:
        assert "dmt-ingest" not in {t.name for t in threading.enumerate()} - before
    assert SharedStore(route.state.ingestor.engine, KEY).counts()["packages"] == 5
    with pytest.raises(Exception, match="ingest_threads must be a positive integer or 0"):
        ServiceConfig(ingest_threads=-1)


def test_a_write_on_a_connection_the_database_dropped_goes_again_on_a_fresh_one(postgres_url):
    """No ping before each use of a pooled connection (a round trip a group): a package
    written on a connection PostgreSQL has dropped (a restart, an idle timeout) is written
    again on a new one and accepted, not answered 503."""
    import psycopg

    app = create_app(postgres_url, KEY, POLICY)
    with TestClient(app) as c:
        assert post(c, seal_package(package(80), KEY.public_key())).status_code == 201
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres",
                             autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()
        assert dropped is not None and dropped[0] >= 1  # the pool's connections are gone
        assert post(c, seal_package(package(81), KEY.public_key())).status_code == 201
    assert SharedStore(app.state.ingestor.engine, KEY).counts()["packages"] == 2


def test_the_service_runs_on_httptools_and_uvloop(monkeypatch):
    pytest.importorskip("httptools")
    pytest.importorskip("uvloop")
    import uvicorn

    from dmt_model.server import service

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    monkeypatch.setattr(service, "REUSE_PORT", False)  # workers on uvicorn's shared socket
    service.run_service(create_app("sqlite://", KEY, POLICY))
    service.run_service("module:factory", workers=2)
    assert calls[0]["http"] is service.HeaderTimeoutHttpToolsProtocol
    assert calls[1]["http"] == "dmt_model.server.service:HeaderTimeoutHttpToolsProtocol"
    assert calls[0]["loop"] == calls[1]["loop"] == "uvloop"


@pytest.mark.slow
def test_workers_log_refusals_and_their_batches(tmp_path, files, server_load):
    """`dmt serve --workers 2`: each worker logs like the single process (a refused package
    with its reason; the batches it took, when it stops). Worker processes are spawned, so
    the parent's log handler was not theirs: their refusals went unlogged."""
    service = server_load.ServiceProcess(f"sqlite:///{tmp_path / 's.db'}", *files,
                                         log=tmp_path / "serve.log", extra=["--workers", "2"])
    service.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        for body, status in ((b"garbage", 400),
                             (server_load.make_envelopes(1, KEY.public_key(), seed=9)[0][1], 201)):
            conn.request("POST", "/v1/packages", body=body)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == status
        conn.close()
    finally:
        service.stop()
    logged = (tmp_path / "serve.log").read_text()
    assert "package refused (<http>): unreadable" in logged
    assert "ingested 1 packages in 1 batches" in logged or "ingested 2 packages" in logged


@pytest.mark.skipif(not LINUX, reason="SO_REUSEPORT balancing is Linux's")
def test_workers_listen_each_on_a_socket_of_their_own(monkeypatch):
    """`dmt serve --workers N`: the supervisor holds the port (a taken one fails at once), each
    worker listens with SO_REUSEPORT on it, and the kernel spreads connections over them
    (one shared socket let one of two workers take 38 of 50 clients)."""
    import uvicorn.supervisors

    from dmt_model.server import service

    started = []

    class Supervisor:  # uvicorn's Multiprocess, without processes
        def __init__(self, config, target, sockets):
            started.append((config, target, sockets))

        def run(self):
            pass

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Supervisor)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            service.run_service("module:factory", workers=2, port=taken.getsockname()[1])
    assert not started
    service.run_service("dmt_model.cli.serve:worker_app", workers=2, port=0)
    ((config, target, sockets),) = started
    assert sockets == [] and config.workers == 2 and config.port > 0
    assert config.http == "dmt_model.server.service:HeaderTimeoutHttpToolsProtocol"
    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets))
    listeners = []
    try:
        for _ in range(2):  # what each worker process does
            target(sockets=[])
            (sock,) = served[-1]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockname()[1] == config.port
            sock.listen()
            sock.setblocking(False)
            listeners.append(sock)
        clients = [socket.create_connection(("127.0.0.1", config.port)) for _ in range(40)]
        accepted = [0, 0]
        deadline = time.monotonic() + 10
        while sum(accepted) < len(clients) and time.monotonic() < deadline:
            for i, sock in enumerate(listeners):
                try:
                    sock.accept()[0].close()
                    accepted[i] += 1
                except BlockingIOError:
                    pass
        for c in clients:
            c.close()
        assert sum(accepted) == 40
        assert min(accepted) >= 5, accepted  # each worker its share (all 40 on one: p = 2e-12)
    finally:
        for sock in listeners:
            sock.close()


@pytest.mark.slow
def test_headers_of_a_next_request_on_a_kept_alive_connection_must_be_quick(tmp_path, files,
                                                                           server_load):
    """The header timeout is armed again after each response (httptools protocol): a client
    that keeps its connection and then trickles the next request's headers is closed."""
    service = server_load.ServiceProcess(f"sqlite:///{tmp_path / 's.db'}", *files,
                                         extra=["--body-timeout", "1"]).start()
    try:
        closed_after = _trickled_headers_closed_after(
            service.port, first=b"GET /v1/health", answer_end=b'{"status":"ok"}',
            then=b"POST /v1/packages")
    finally:
        service.stop()
    assert 0.8 < closed_after < 2.5


def _trickled_headers_closed_after(port: int, *, first: bytes = b"GET /",
                                   answer_end: bytes = b"\r\n\r\nok",
                                   then: bytes = b"POST /") -> float:
    """Seconds until the server closes a connection that answered one request (``first``,
    whose answer ends with ``answer_end``) and then trickles the next request's (``then``)
    headers without ever ending them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(first + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(answer_end):
            chunk = s.recv(4096)
            assert chunk, f"closed before the answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        s.sendall(then + b" HTTP/1.1\r\nHost: x\r\n")
        for _ in range(40):  # a header line every 0.1 s, never the end of the headers
            try:
                s.sendall(b"X-A: b\r\n")
            except OSError:
                break
            if select.select([s], [], [], 0.1)[0]:
                break
        closed_after = time.monotonic() - started
        assert s.recv(64) == b""
    return closed_after


@pytest.mark.parametrize("name", ["HeaderTimeoutH11Protocol", "HeaderTimeoutHttpToolsProtocol"])
def test_each_protocol_closes_trickled_headers_on_a_fresh_and_a_kept_alive_connection(name):
    """Both protocols (httptools, and the h11 fallback) share the header timer: armed on
    connect and after each response, it closes a connection whose headers never end."""
    import uvicorn

    from dmt_model.server import service

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    app.state = argparse.Namespace(config=ServiceConfig(body_timeout=1.0))  # what it reads
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           http=getattr(service, name), lifespan="off",
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)

        def fresh_closed_after() -> float:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\n")  # a fresh connection never ending its headers
                started = time.monotonic()
                assert s.recv(64) == b""  # closed, nothing sent
                return time.monotonic() - started

        with ThreadPoolExecutor(max_workers=2) as pool:  # both timeouts waited out at once
            fresh, kept_alive = pool.submit(fresh_closed_after), pool.submit(
                _trickled_headers_closed_after, port)
        assert 0.8 < fresh.result() < 2.5
        assert 0.8 < kept_alive.result() < 2.5
    finally:
        server.should_exit = True
        thread.join(timeout=10)
