"""Load and faults on the HTTP ingestion service (`dmt serve`), into SQLite and PostgreSQL.

Concurrent clients (one asyncio loop, one keep-alive connection each, loopback only)
post sealed share packages to a `dmt serve` process. A client retries on a lost
connection and on a retryable status (503, 408) after ``Retry-After``; ``201``
and ``409`` end a package (``409`` after a retry means the first attempt was
stored but its answer was lost). Afterwards the database is read: every
package acknowledged must be stored exactly once, with all its records.

Scenarios (each into SQLite and, when a PostgreSQL URL is given, PostgreSQL):

- ``steady``: N packages, C clients;
- ``faults``: the same with the service SIGKILLed and restarted at 30 % of
  the load and, on PostgreSQL, the database restarted (``pg_ctl restart -m
  immediate``: a crash and recovery) at 60 %.

Reports p50/p99 latency of the answered requests and packages/s (wall clock,
packages acknowledged / time). Writes server_load.json into ``--output``
(default benchmarks/results).

Usage: python benchmarks/server_load.py [--packages 10000] [--clients 50]
       [--postgres URL --pg-ctl "pg_ctl -D DATA"] (default: DMT_TEST_POSTGRES_URL and
       DMT_TEST_POSTGRES_CTL, as `make test` sets them) [--stores sqlite,postgresql]

Old code against new, in the same window: ``--peer DIR [--rounds 3]`` (DIR another
checkout, e.g. ``git worktree add /tmp/before HEAD~1``; it runs on this interpreter, with
its own code first on sys.path) runs the steady loads with its `dmt serve` and this
checkout's in turn and writes their medians and ratios (this / peer) to
server_load_peer.json.

The tests (tests/model/test_service.py) import this module and run smaller loads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import random
import re
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.server import ServerPolicy
from dmt_privacy import Field, Schema
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import ServerPublicKey

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
    Field("note", "text"),
    Field("score", "numeric", bounds=(0, 100_000)),
))
POLICY = ServerPolicy(SCHEMA, min_k=3)
CLASSES = [(pd.Interval(20.0, 29.0, closed="both"), frozenset({"a", "b"})),
           (pd.Interval(30.0, 45.0, closed="both"), frozenset({"c"})),
           (pd.Interval(46.0, 60.0, closed="both"), frozenset({"a", "b", "c", "d"}))]


def make_envelopes(n: int, public_key: ServerPublicKey, *, records: int = 3,
                   seed: int = 0, tokens: Sequence[Any] | None = None) -> list[tuple[str, bytes]]:
    """(package id, sealed bytes) of ``n`` valid packages of ``records`` records each.

    ``tokens``: one Privacy Pass token per package (a policy with ``tokens_per_period``).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        chosen = [CLASSES[c] for c in rng.integers(0, len(CLASSES), records)]
        package = SharePackage.create(SCHEMA.schema_id, {
            "age": [c[0] for c in chosen], "zip": [c[1] for c in chosen],
            "note": [f"note-{i}-{j}" for j in range(records)],
            "score": [float(rng.uniform(0, 1000)) for _ in range(records)],
        }, PrivacyReceipt(k=3))
        token = None if tokens is None else tokens[i]
        out.append((package.package_id, seal_package(package, public_key, token=token)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SERVE = """
import argparse, sys
from dmt_model.cli import serve as m
p = argparse.ArgumentParser(prog="dmt"); m.register(p.add_subparsers(dest="command"))
a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))
"""


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (Linux: ``/proc/net/tcp``, state 0A)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(row[1] == f"0100007F:{port:04X}" and row[3] == "0A" for row in rows)


def _in_checkout(root: Path) -> dict[str, Any]:
    """``subprocess`` options that make a ``python -c`` child import ``root``'s code: its
    ``PYTHONPATH``, and its working folder (``-c`` puts the working folder first on
    ``sys.path``, so from another checkout the child imported that one's code)."""
    return {"env": {**os.environ, "PYTHONPATH": str(root)}, "cwd": root}


def imported_from(root: Path) -> Path:
    """The ``dmt_model`` package a service started for ``root`` imports."""
    found = subprocess.run([sys.executable, "-c", "import dmt_model; print(dmt_model.__file__)"],
                           capture_output=True, text=True, check=True, **_in_checkout(root))
    return Path(found.stdout.strip()).resolve()


class ServiceProcess:
    """`dmt serve` in a child process on 127.0.0.1, restartable on the same port."""

    def __init__(self, db_url: str, key_file: Path, policy_file: Path, *,
                 models: Path | None = None, extra: Sequence[str] = (),
                 port: int | None = None, log: Path | None = None,
                 root: Path = ROOT) -> None:
        self.port = port or free_port()
        #: the checkout whose `dmt serve` runs (another one: --peer)
        self.root = root
        self.argv = [sys.executable, "-c", _SERVE, "serve", "--db", db_url, "--key",
                     str(key_file), "--policy", str(policy_file), "--port", str(self.port),
                     *(["--models", str(models)] if models is not None else []), *extra]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        child = _in_checkout(self.root)
        # a session of its own: with --workers, SIGKILL takes the supervisor and its workers
        if self.log is None:
            self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True,
                                            **child)
        else:
            with open(self.log, "ab") as out:  # the child keeps its own descriptor
                self.process = subprocess.Popen(self.argv, stdout=out, stderr=out,
                                                start_new_session=True, **child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dmt serve exited with {self.process.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v1/health")
                if conn.getresponse().status == 200 and self._all_listening():
                    conn.close()
                    return self
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        listening = listening_sockets(self.port) if sys.platform.startswith("linux") else "?"
        self.kill()
        raise RuntimeError(f"dmt serve did not answer on port {self.port} with every worker "
                           f"listening in {timeout} s ({listening} socket(s) listening)")

    def _all_listening(self) -> bool:
        """Whether every worker of ``--workers N`` listens. Each has a ``SO_REUSEPORT`` socket
        of its own (Linux), and a client goes to one of the sockets listening when it
        connects: a load begun when the first worker answered kept its clients on that one
        (two workers used one core between them). Elsewhere the workers share one socket."""
        workers = int(self.argv[self.argv.index("--workers") + 1]) \
            if "--workers" in self.argv else 1
        if workers == 1 or not sys.platform.startswith("linux"):
            return True
        return listening_sockets(self.port) >= workers

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the service and any workers
        self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL to the service and its workers: no shutdown, no flush, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self._kill_group()

    def stop(self) -> None:
        """SIGTERM: finish requests in flight, then exit (workers too)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            self._kill_group()  # whatever outlived the supervisor

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the service and its workers so far (Linux /proc)."""
        assert self.process is not None
        group = self.process.pid  # its own session: the workers share its process group
        return _cpu_seconds(lambda pid, ppid, pgrp: pgrp == group)

    def restart(self) -> None:
        self.kill()
        self.start()

    def rss_bytes(self) -> int:
        """Resident memory of the service (Linux /proc)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LoadResult:
    packages: int
    clients: int
    seconds: float
    acknowledged: int
    packages_per_second: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    connection_errors: int
    accepted_ids: list[str] = field(repr=False, default_factory=list)
    replayed_ids: list[str] = field(repr=False, default_factory=list)
    unanswered_ids: list[str] = field(repr=False, default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    #: CPU time of the load generator (this process) during the load
    client_cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("accepted_ids", "replayed_ids", "unanswered_ids"):
            out[name] = len(out[name])
        return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


def _cpu_seconds(chosen: Callable[[int, int, int], bool]) -> float:
    """CPU seconds (user + system) of the live processes ``chosen(pid, parent, group)`` picks."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if chosen(int(stat.parent.name), int(fields[1]), int(fields[2])):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_of(pid: int) -> float:
    """CPU seconds of the live process ``pid`` and its children (PostgreSQL's backends)."""
    return _cpu_seconds(lambda p, parent, _: pid in (p, parent))


def postmaster_pid(pg_ctl: str | None) -> int | None:
    """The PostgreSQL server's pid, from ``postmaster.pid`` in the data folder of ``pg_ctl -D``."""
    words = shlex.split(pg_ctl or "")
    if "-D" not in words:
        return None
    try:
        return int((Path(words[words.index("-D") + 1]) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def uptime() -> str:
    """The load averages, as `uptime` prints them: other work on the machine disturbs figures."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_load(base_url: str, envelopes: Sequence[tuple[str, bytes]], *, clients: int,
             deadline: float = 300.0,
             faults: Sequence[tuple[float, Callable[[], None]]] = ()) -> LoadResult:
    """Post every envelope once (retrying as a device would) from ``clients`` connections.

    One asyncio event loop drives all the clients (one keep-alive connection
    each, a protocol object rather than stream readers: requests written as
    prepared bytes, each answer parsed once when complete), so the load
    generator costs little CPU next to the service it measures; its CPU time
    is in ``client_cpu_seconds``. ``faults``: (fraction acknowledged,
    action) pairs, each run once, in its own thread, when that fraction of the
    packages has been acknowledged.
    """
    try:  # the client on uvloop too (when installed): less of the 2 cores for the generator
        import uvloop
        run: Callable[[Any], LoadResult] = uvloop.run
    except ImportError:
        run = asyncio.run
    return run(_run_load(base_url, envelopes, clients=clients, deadline=deadline,
                         faults=faults))


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: a request written as prepared bytes, its answer
    parsed from the buffer when complete (status, ``Retry-After``, ``Connection: close``),
    one future a request: no stream reader, no await per header line."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, float | None, bool]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes) -> asyncio.Future[tuple[int, float | None, bool]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        if self.lost:
            self.answer.set_exception(ConnectionResetError("connection lost"))
        else:
            self.transport.write(data)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, retry_after, close = 0, None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry_after = float(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if len(self.buffer) >= end + 4 + length:
            self.answer.set_result((status, retry_after, close))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("closed by the server"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _run_load(base_url: str, envelopes: Sequence[tuple[str, bytes]], *, clients: int,
                    deadline: float,
                    faults: Sequence[tuple[float, Callable[[], None]]]) -> LoadResult:
    host, port = base_url.removeprefix("http://").split(":")
    head = ("POST /v1/packages HTTP/1.1\r\nHost: {h}\r\nContent-Type: "
            "application/octet-stream\r\nContent-Length: {n}\r\n\r\n")
    work = iter([(pid, head.format(h=host, n=len(body)).encode() + body)
                 for pid, body in envelopes])
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    accepted: list[str] = []
    replayed: list[str] = []
    unanswered: list[str] = []
    failed: Counter[str] = Counter()
    errors = 0
    stop_at = time.monotonic() + deadline

    async def client() -> None:
        nonlocal errors
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        for pid, request in work:
            pause = 0.02
            while True:
                if time.monotonic() > stop_at:
                    unanswered.append(pid)
                    break
                start = time.perf_counter()
                try:
                    async with asyncio.timeout(30):
                        if conn is None:
                            _, conn = await loop.create_connection(_Connection, host, int(port))
                        status, retry_after, close = await conn.request(request)
                except (OSError, TimeoutError, ValueError, IndexError):
                    if conn is not None:
                        conn.close()
                    conn = None
                    errors += 1
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.5)
                    continue
                elapsed = time.perf_counter() - start
                if close:
                    conn.close()
                    conn = None
                statuses[str(status)] += 1
                if status in (503, 408):
                    await asyncio.sleep(min(retry_after or 1.0, 1.0) * random.uniform(0.5, 1.5))
                    continue
                latencies.append(elapsed)
                if status == 201:
                    accepted.append(pid)
                elif status == 409:
                    replayed.append(pid)
                else:
                    failed[str(status)] += 1
                    unanswered.append(pid)
                break
        if conn is not None:
            conn.close()

    pending = sorted(faults, key=lambda f: f[0])
    fault_threads: list[threading.Thread] = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    while not all(t.done() for t in tasks):
        done = len(accepted) + len(replayed)
        while pending and done >= pending[0][0] * len(envelopes):
            action = pending.pop(0)[1]
            fault_threads.append(threading.Thread(target=action, daemon=True))
            fault_threads[-1].start()
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    for task in tasks:
        task.result()  # a bug in the client is raised, not hidden
    for t in fault_threads:
        t.join(timeout=120)
    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    acknowledged = len(accepted) + len(replayed)
    return LoadResult(
        packages=len(envelopes), clients=clients, seconds=round(seconds, 3),
        acknowledged=acknowledged, packages_per_second=round(acknowledged / seconds, 1),
        latency_ms={"p50": round(float(np.percentile(lat, 50)), 2),
                    "p99": round(float(np.percentile(lat, 99)), 2),
                    "max": round(float(lat.max()), 2)},
        statuses=dict(statuses), connection_errors=errors, accepted_ids=accepted,
        replayed_ids=replayed, unanswered_ids=unanswered, failed=dict(failed),
        client_cpu_seconds=round(client_cpu, 2))


def stored(db_url: str) -> dict[str, Any]:
    """What the database holds: package ids (with repeats, if any), records per package."""
    from sqlalchemy import text

    from dmt_model.server import connect

    engine = connect(db_url)
    try:
        with engine.connect() as conn:
            ids = [r[0] for r in conn.execute(text("SELECT package_id FROM packages"))]
            per_package = dict(conn.execute(text(
                "SELECT package_id, SUM(n_records) FROM records GROUP BY package_id")).all())
            class_total = conn.execute(text("SELECT SUM(n_records) FROM classes")).scalar()
            n_records = dict(conn.execute(text(
                "SELECT package_id, n_records FROM packages")).all())
    finally:
        engine.dispose()
    return {"ids": ids, "records_per_package": {k: int(v) for k, v in per_package.items()},
            "n_records": n_records, "class_total": int(class_total or 0)}


def check_exactly_once(result: LoadResult, db: dict[str, Any],
                       envelopes: Sequence[tuple[str, bytes]], records: int) -> dict[str, Any]:
    """The exactly-once properties; a dict of named booleans (all must hold)."""
    sent = {pid for pid, _ in envelopes}
    acknowledged = set(result.accepted_ids) | set(result.replayed_ids)
    ids = db["ids"]
    return {
        "every_package_acknowledged": acknowledged == sent and not result.unanswered_ids,
        "every_acknowledged_stored": acknowledged <= set(ids),
        "nothing_else_stored": set(ids) <= sent,
        "none_stored_twice": len(ids) == len(set(ids)),
        "accepted_at_most_once": len(result.accepted_ids) == len(set(result.accepted_ids)),
        "records_complete": all(db["records_per_package"].get(p) == records
                                and db["n_records"].get(p) == records for p in ids),
        "class_counts_match": db["class_total"] == records * len(ids),
    }


def postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the server of ``admin_url``; (its URL, a function dropping it)."""
    import psycopg

    name = f"dmt_{secrets.token_hex(6)}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = conninfo.rpartition("/")

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def pg_restart(ctl: str) -> Callable[[], None]:
    """An action restarting PostgreSQL as a crash would (immediate stop, then recovery)."""
    def action() -> None:
        subprocess.run([*shlex.split(ctl), "restart", "-m", "immediate", "-w", "-t", "60"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return action


def scenario(name: str, db_url: str, envelopes: Sequence[tuple[str, bytes]], *, clients: int,
             key_file: Path, policy_file: Path, records: int, pg_ctl: str | None = None,
             faults: bool = False, workers: int = 1, deadline: float = 600.0,
             extra: Sequence[str] = (), root: Path = ROOT) -> dict[str, Any]:
    """One load on a fresh ``db_url``; ``pg_ctl`` measures PostgreSQL's CPU, and with
    ``faults`` restarts it (crash and recovery) at 60 %. ``extra``: more `dmt serve` options;
    ``root``: the checkout whose service runs."""
    log = Path(tempfile.mkdtemp(prefix="dmt-serve-log-")) / "serve.log"
    service = ServiceProcess(db_url, key_file, policy_file, root=root, log=log,
                             extra=["--workers", str(workers), *extra]).start()
    load_before = uptime()
    busy0, total0 = _machine_busy()
    try:
        actions: list[tuple[float, Callable[[], None]]] = []
        if faults:
            actions.append((0.3, service.restart))
            if pg_ctl is not None:
                actions.append((0.6, pg_restart(pg_ctl)))
        server0 = service.cpu_seconds()
        postgres = postmaster_pid(pg_ctl)
        db0 = _cpu_of(postgres) if postgres else 0.0
        result = run_load(service.url, envelopes, clients=clients, faults=actions,
                          deadline=deadline)
        server_cpu = service.cpu_seconds() - server0  # after a restart: the new processes'
        db_cpu = _cpu_of(postgres) - db0 if postgres and not faults else None
    finally:
        busy1, total1 = _machine_busy()
        service.stop()
        logged = log.read_text(errors="replace") if log.exists() else ""
        log.unlink(missing_ok=True)
        log.parent.rmdir()
    checks = check_exactly_once(result, stored(db_url), envelopes, records)
    cores = (total1 - total0) / result.seconds
    return {"scenario": name, "workers": workers, **result.summary(),
            "records_per_second": round(result.packages_per_second * records, 1),
            "cpu_cores": {"machine_busy": round((busy1 - busy0) / result.seconds, 2),
                          "machine": round(cores),
                          "service": round(server_cpu / result.seconds, 2),
                          "database": None if db_cpu is None else round(db_cpu / result.seconds, 2),
                          "load_generator": round(result.client_cpu_seconds / result.seconds, 2)},
            # CPU time per package acknowledged: what the run cost, whatever else ran
            "cpu_ms_per_package": {
                "service": round(server_cpu / max(result.acknowledged, 1) * 1000, 3),
                "database": None if db_cpu is None else round(
                    db_cpu / max(result.acknowledged, 1) * 1000, 3),
                "load_generator": round(
                    result.client_cpu_seconds / max(result.acknowledged, 1) * 1000, 3)},
            # a killed process logs none of its batches: a fault run's would be a part
            "batches": None if faults else batches_logged(logged),
            "uptime_load_before": load_before, "uptime_load_after": uptime(),
            "checks": checks}


_BATCHES = re.compile(r"ingested (\d+) packages in (\d+) batches")


def batches_logged(log: str) -> dict[str, Any] | None:
    """The batches the service's processes took, from what each logs when it stops: their
    number and packages a batch, in all and by process (None if none logged: a process
    killed logs nothing). Each batch is checked and written in one transaction, and costs
    the service and the database a share that does not grow with its packages: the more
    batches a package, the more CPU a package."""
    taken = [(int(n), int(b)) for n, b in _BATCHES.findall(log)]
    if not taken:
        return None
    packages, batches = sum(n for n, _ in taken), sum(b for _, b in taken)
    return {"count": batches, "packages_per_batch": round(packages / max(batches, 1), 1),
            "packages_per_batch_by_process": [round(n / max(b, 1), 1) for n, b in taken]}


def ceiling(db_url: str, envelopes: Sequence[tuple[str, bytes]], key: Any, *,
            group: int = 64) -> dict[str, Any]:
    """Plain inserts of the same rows (package rows, record blocks), no checks, no HTTP.

    The packages are opened and prepared first (not timed); then their rows go
    in with plain INSERTs (executemany), ``group`` packages per transaction, on
    one connection: no replay check, no class counters, no release. What the
    database takes at most from one Python writer.
    """
    from sqlalchemy import insert

    from dmt_model.server.ingest import Ingestor, PreparedIngest
    from dmt_model.server.store import PACKAGES, RECORDS

    ingestor = Ingestor(db_url, key, POLICY)
    prepared = []
    for _, body in envelopes:
        ready = ingestor.check(body)
        assert isinstance(ready, PreparedIngest), ready
        prepared.append(ready.prepared)
    load_before = uptime()
    t0 = time.perf_counter()
    with ingestor.engine.connect() as conn:
        for start in range(0, len(prepared), group):
            chunk = prepared[start:start + group]
            with conn.begin():
                conn.execute(insert(PACKAGES), [{**p.package_row, "received_at": "now"}
                                                for p in chunk])
                conn.execute(insert(RECORDS), [r for p in chunk for r in p.record_rows])
    seconds = time.perf_counter() - t0
    ingestor.engine.dispose()
    return {"packages": len(prepared), "group": group, "seconds": round(seconds, 3),
            "packages_per_second": round(len(prepared) / seconds, 1),
            "uptime_load_before": load_before, "uptime_load_after": uptime()}


def _uptime_command() -> str:
    """What `uptime` prints (the load of the machine, other work included)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {uptime()}"


_SPIN = """
import hashlib, sys, time
end, n, block = time.perf_counter() + float(sys.argv[1]), 0, bytes(4096)
while time.perf_counter() < end:
    sum(range(200)); hashlib.sha256(block).digest(); n += 1
print(n)
"""


def machine_scaling(seconds: float = 3.0) -> dict[str, Any]:
    """How much more CPU work two processes get done than one on this machine, measured now:
    a loop of interpreter work and hashing, run alone and then twice at once for ``seconds``
    each. On two independent idle cores it is 2.0; two hyperthreads of one core, a CPU quota
    or other jobs make it less. Two service workers cannot scale beyond it."""
    def run(copies: int) -> int:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(seconds)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(copies)]
        return sum(int(p.communicate()[0]) for p in procs)

    one, two = run(1), run(2)
    return {"one_process": one, "two_processes": two, "ratio": round(two / one, 2),
            "seconds": seconds}


def _scaling(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Packages/s with two workers over one, by store (steady runs of the same invocation)."""
    out = {}
    for store in ("sqlite", "postgresql"):
        steady = {r["workers"]: r["packages_per_second"] for r in runs
                  if r["scenario"].startswith(f"{store} steady")}
        if 1 in steady and 2 in steady:
            out[store] = round(steady[2] / steady[1], 2)
    return out


def _full_use(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What 1 -> 2 workers would be if each ran flat out, by store, from the steady runs.

    One worker is one process: the GIL holds it to about one core, so it can do at most
    1 / s1 packages a second (s1: its CPU ms a package). Two share the machine with the
    database and the load generator: at most ``cores`` / C2 (C2: all three's CPU ms a
    package with two workers). ``ratio`` is the one over the other; the measured ratio is
    about ``ratio`` x ``two_workers_machine_use`` / ``one_worker_core_use``, so a measured
    ratio above it means that one worker left part of its core idle."""
    out = {}
    for store in ("sqlite", "postgresql"):
        steady = {r["workers"]: r for r in runs if r["scenario"].startswith(f"{store} steady")}
        if 1 not in steady or 2 not in steady:
            continue
        one, two = steady[1], steady[2]
        s1 = one["cpu_ms_per_package"]["service"]
        c2 = sum(v or 0.0 for v in two["cpu_ms_per_package"].values())
        cores = two["cpu_cores"]["machine"]
        out[store] = {"ratio": round(cores * s1 / c2, 2),
                      "one_worker_core_use": one["cpu_cores"]["service"],
                      "two_workers_machine_use": round(two["cpu_cores"]["machine_busy"] / cores,
                                                       2)}
    return out


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def _compare(args: argparse.Namespace, stores: Sequence[tuple[str, Callable[[], str], str | None]],
             worker_counts: Sequence[int], envelopes: Sequence[tuple[str, bytes]],
             common: dict[str, Any], uptime_before: str) -> int:
    """This checkout's service and ``args.peer``'s take the same steady loads in turn, in
    ``args.rounds`` rounds (the order swapped each round, so a host speeding up or slowing
    down through the window favours neither); the medians and their ratio (this / peer) by
    store and worker count, into server_load_peer.json."""
    roots = {"this": ROOT, "peer": args.peer.resolve()}
    for which, root in roots.items():  # each service must import its own checkout's code
        found = imported_from(root)
        if not found.is_relative_to(root.resolve()):
            raise RuntimeError(f"{which}'s service would import {found}, not {root}'s code")
        print(f"{which}: {root} at {_commit(root)}", flush=True)
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for store, make_url, ctl in stores:
            counts = worker_counts[:2] if store == "sqlite" else worker_counts
            for workers in counts:
                order = ("this", "peer") if round_ % 2 == 0 else ("peer", "this")
                for which in order:
                    run = scenario(f"{store} steady, {workers} worker(s), {which}", make_url(),
                                   envelopes, records=args.records, workers=workers,
                                   pg_ctl=ctl, root=roots[which], **common)
                    run.update(store=store, code=which, round=round_)
                    _print(run)
                    runs.append(run)
    summary = []
    for store, _, _ in stores:
        for workers in sorted({r["workers"] for r in runs if r["store"] == store}):
            mine = [r for r in runs if (r["store"], r["workers"]) == (store, workers)]
            # a run whose exactly-once checks failed measured something else: not in a median
            good = {which: [r["packages_per_second"] for r in mine
                            if r["code"] == which and all(r["checks"].values())]
                    for which in roots}
            failed = sum(not all(r["checks"].values()) for r in mine)
            if not all(good.values()):
                summary.append({"store": store, "workers": workers, "failed_runs": failed})
                print(f"{store}, {workers} worker(s): no median, {failed} run(s) failed "
                      "their checks", flush=True)
                continue
            medians = {which: round(statistics.median(values), 1)
                       for which, values in good.items()}
            summary.append({"store": store, "workers": workers,
                            "packages_per_second": medians,
                            "ratio": round(medians["this"] / medians["peer"], 3),
                            "failed_runs": failed})
            print(f"{store}, {workers} worker(s): this {medians['this']:.0f} packages/s, peer "
                  f"{medians['peer']:.0f} (medians of the runs that passed their checks"
                  f"{f'; {failed} failed' if failed else ''}): "
                  f"{medians['this'] / medians['peer']:.2f}x", flush=True)
    out = {"benchmark": "server_load --peer", "this": _commit(ROOT),
           "peer": {"root": str(roots["peer"]), "commit": _commit(roots["peer"])},
           "rounds": args.rounds, "packages": args.packages, "clients": args.clients,
           "records_per_package": args.records, "serve_options": args.serve_options,
           "uptime_before": uptime_before, "uptime_after": _uptime_command(),
           "summary": summary, "runs": runs}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "server_load_peer.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output / 'server_load_peer.json'}")
    return 0 if all(all(r["checks"].values()) for r in runs) else 1


def _batch_words(batches: dict[str, Any] | None) -> str:
    if not batches:
        return ""
    return f"{batches['count']} batches ({batches['packages_per_batch']} packages each)  "


def _print(run: dict[str, Any]) -> None:
    print(f"{run['scenario']:34s} {run['packages_per_second']:8.1f} packages/s "
          f"({run['records_per_second']:9.1f} records/s)  p50 {run['latency_ms']['p50']:7.1f} ms"
          f"  p99 {run['latency_ms']['p99']:7.1f} ms  statuses {run['statuses']}  "
          f"{_batch_words(run.get('batches'))}cores "
          f"{run['cpu_cores']}  CPU ms/package {run['cpu_ms_per_package']}  "
          f"load {run['uptime_load_before']}  "
          f"all checks {all(run['checks'].values())}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from dmt_privacy.seal import generate_server_key, save_private_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--records", type=int, default=3, help="records per package")
    parser.add_argument("--workers", default="1,2,4",
                        help="service processes to measure, comma-separated (default 1,2,4; "
                             "SQLite runs the first two)")
    parser.add_argument("--large-records", type=int, default=300,
                        help="records per package of the large-package run (0: none)")
    parser.add_argument("--large-packages", type=int, default=1000)
    parser.add_argument("--postgres", default=os.environ.get("DMT_TEST_POSTGRES_URL"))
    parser.add_argument("--pg-ctl", default=os.environ.get("DMT_TEST_POSTGRES_CTL"))
    parser.add_argument("--serve-options", default="",
                        help="more `dmt serve` options for every run, e.g. '--threads 0'")
    parser.add_argument("--stores", default="sqlite,postgresql",
                        help="stores to measure, comma-separated (default both)")
    parser.add_argument("--peer", type=Path, default=None,
                        help="another checkout (e.g. `git worktree add /tmp/before <commit>`): "
                             "its `dmt serve` and this one's (the checkout holding this script) "
                             "take the steady loads in turn, --rounds times (no ceilings, faults "
                             "or large packages), both on this interpreter with their own code "
                             "first on sys.path; writes server_load_peer.json, whose ratio is "
                             "this / peer")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --peer (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]
    chosen = set(args.stores.split(","))
    if not chosen <= {"sqlite", "postgresql"}:
        parser.error(f"--stores: sqlite and/or postgresql, comma-separated, got "
                     f"{args.stores!r}")
    if args.peer is not None and not (args.peer / "dmt_model" / "server").is_dir():
        parser.error(f"--peer: {args.peer} is not a dmt checkout (no dmt_model/server); pass "
                     "one, e.g. made with `git worktree add /tmp/before <commit>`")

    key = generate_server_key()
    uptime_before = _uptime_command()
    cpu_scaling = machine_scaling()
    print(f"this machine: two processes do {cpu_scaling['ratio']}x the CPU work of one",
          flush=True)
    runs: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_private_key(key, folder / "server.key")
        (folder / "policy.json").write_text(POLICY.to_json())
        t0 = time.perf_counter()
        envelopes = make_envelopes(args.packages, key.public_key(), records=args.records)
        large = (make_envelopes(args.large_packages, key.public_key(),
                                records=args.large_records, seed=1)
                 if args.large_records and args.peer is None else [])
        print(f"sealed {len(envelopes) + len(large)} packages in "
              f"{time.perf_counter() - t0:.1f} s")
        stores: list[tuple[str, Callable[[], str], str | None]] = [
            ("sqlite", lambda: f"sqlite:///{folder / secrets.token_hex(4)}.db", None)]
        drops: list[Callable[[], None]] = []
        if "postgresql" in chosen and args.postgres:
            def pg_url() -> str:
                url, drop = postgres_database(args.postgres)
                drops.append(drop)
                return url
            stores.append(("postgresql", pg_url, args.pg_ctl))
        elif "postgresql" in chosen:
            print("no PostgreSQL URL (--postgres or DMT_TEST_POSTGRES_URL): SQLite only")
        stores = [entry for entry in stores if entry[0] in chosen]
        common = dict(clients=args.clients, key_file=folder / "server.key",
                      policy_file=folder / "policy.json",
                      extra=shlex.split(args.serve_options))
        if args.peer is not None:
            try:
                return _compare(args, stores, worker_counts, envelopes, common, uptime_before)
            finally:
                for drop in drops:
                    drop()
        try:
            for store, make_url, ctl in stores:
                ceilings[store] = ceiling(make_url(), envelopes, key)
                print(f"{store} ceiling: {ceilings[store]['packages_per_second']} packages/s "
                      f"(plain inserts, {ceilings[store]['group']} per transaction)", flush=True)
                counts = worker_counts[:2] if store == "sqlite" else worker_counts
                steady = []
                for workers in counts:
                    run = scenario(f"{store} steady, {workers} worker(s)", make_url(), envelopes,
                                   records=args.records, workers=workers, pg_ctl=ctl, **common)
                    steady.append(run)
                    _print(run)
                best = max(steady, key=lambda r: r["packages_per_second"])["workers"]
                run = scenario(f"{store} faults, {best} worker(s)", make_url(), envelopes,
                               records=args.records, workers=best, pg_ctl=ctl, faults=True,
                               **common)
                _print(run)
                runs += [*steady, run]
                if large:
                    run = scenario(f"{store} {args.large_records} records, {best} worker(s)",
                                   make_url(), large, records=args.large_records,
                                   workers=best, pg_ctl=ctl, **common)
                    _print(run)
                    runs.append(run)
        finally:
            for drop in drops:
                drop()
    out = {"benchmark": "server_load", "machine": {"cpus": os.cpu_count(),
                                                   "python": platform.python_version(),
                                                   "platform": platform.platform()},
           "packages": args.packages, "clients": args.clients,
           "records_per_package": args.records, "large_packages": args.large_packages,
           "large_records_per_package": args.large_records,
           "serve_options": args.serve_options,
           "uptime_before": uptime_before, "uptime_after": _uptime_command(),
           "ceiling": ceilings, "scaling_1_to_2_workers": _scaling(runs),
           "scaling_at_full_use_1_to_2_workers": _full_use(runs),
           "machine_scaling_1_to_2_processes": cpu_scaling, "runs": runs}
    for store, scaling in out["scaling_1_to_2_workers"].items():
        full = out["scaling_at_full_use_1_to_2_workers"][store]
        print(f"{store}: 1 -> 2 workers {scaling}x; {full['ratio']}x if both ran flat out "
              f"(one worker used {full['one_worker_core_use']} of its core, two "
              f"{full['two_workers_machine_use']} of the machine)")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "server_load.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output / 'server_load.json'}")
    return 0 if all(all(r["checks"].values()) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
