"""Issue 15.5: idle connections do not starve legitimate requests.

300 sockets that connect and send nothing used to count against uvicorn's
``limit_concurrency`` (256), so 48 of 50 legitimate requests got 503. The
service now limits requests in flight, not connections, and closes a
connection that sends no request line and headers in time.
"""

from __future__ import annotations

import http.client
import socket
import sys
import time

import numpy as np
import pytest
from attack_kit import KEY

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.server import ServerPolicy
from dmt_privacy.seal import save_private_key

IDLE = 300


def _latencies(port: int, n: int) -> tuple[np.ndarray, list[int]]:
    out, statuses = [], []
    for _ in range(n):
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/health")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        conn.close()
        out.append(time.perf_counter() - start)
    return np.asarray(out), statuses


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="many sockets; Linux CI")
def test_idle_sockets_do_not_starve_legitimate_requests(tmp_path, server_load):
    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(
        ServerPolicy(BOSTON_SCHEMA, min_k=5, epsilon={"MEDV": 1.0}).to_json())
    service = server_load.ServiceProcess(f"sqlite:///{tmp_path / 's.db'}",
                                         tmp_path / "server.key", tmp_path / "policy.json")
    service.start()
    idle: list[socket.socket] = []
    try:
        _latencies(service.port, 20)  # warm up
        unloaded, _ = _latencies(service.port, 100)
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", service.port), timeout=10))
        time.sleep(0.2)
        loaded, statuses = _latencies(service.port, 100)
    finally:
        for s in idle:
            s.close()
        service.stop()
    median_unloaded, median_loaded = np.median(unloaded), np.median(loaded)
    p99_loaded = np.quantile(loaded, 0.99)
    print(f"\nGET /v1/health: median {median_unloaded * 1e3:.1f} ms unloaded, "
          f"{median_loaded * 1e3:.1f} ms beside {IDLE} idle sockets "
          f"(p99 {p99_loaded * 1e3:.1f} ms); statuses {set(statuses)}")
    assert set(statuses) == {200}
    # The typical request is not slowed: the median is the statistic a shared 2-core CI
    # machine leaves steady (one scheduler hiccup is a whole p99 of 100 requests: CI once
    # saw 8.9 ms against 1.7 ms with the median unchanged).
    assert median_loaded <= 2 * median_unloaded + 0.002
    # No request waits on the idle sockets: starvation costs a header timeout (seconds)
    # or a 503, far above the scheduling noise this bound leaves room for.
    assert p99_loaded <= 0.1


def _post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/packages", body=body,
                 headers={"Content-Type": "application/octet-stream"})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="many sockets; Linux CI")
def test_slow_bodies_do_not_starve_legitimate_requests(tmp_path, server_load, base, policy):
    """helper-113: a request whose headers are complete counted as in flight for as long as
    its body trickled (up to the body timeout), so 256 connections sending a byte every 2 s
    (128 bytes a second) held every place: /v1/health and every device's package got 503
    for as long as they kept at it. A package's body is now counted once it has arrived,
    when the work it costs begins; while it arrives it holds the bytes sent and a socket."""
    from attack_kit import forge, seal

    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(policy.to_json())
    service = server_load.ServiceProcess(f"sqlite:///{tmp_path / 's.db'}",
                                         tmp_path / "server.key", tmp_path / "policy.json",
                                         extra=["--limit-concurrency", "16"])
    service.start()
    slow: list[socket.socket] = []
    try:
        for _ in range(64):  # four times the limit, each body 1 byte short of complete
            s = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            s.sendall(b"POST /v1/packages HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/octet-stream\r\nContent-Length: 1000\r\n\r\n" + b"A" * 999)
            slow.append(s)
        time.sleep(0.5)
        _, statuses = _latencies(service.port, 20)
        posted = [_post(service.port, seal(forge(base))) for _ in range(5)]
    finally:
        for s in slow:
            s.close()
        service.stop()
    assert set(statuses) == {200}
    assert posted == [201] * 5
