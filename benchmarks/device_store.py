"""Device store at rest: what encryption costs a LocalStore of 10,000 Boston-like records.

Times (median of ``--repeat`` runs), each on a fresh file unless said:

- ``create + add``: create the store and add the records in one call;
- ``open``: reopen the file and read every record (``records()``);
- ``share``: one ``share()`` of half the records (k-anonymity plan, local DP
  on MEDV charging the ledger, seal, outbox);
- ``acknowledge``: the server's acknowledgement of that package;
- ``small write``: one more record added to the full store (every write of
  an encrypted store re-seals the whole file, so this grows with its size);
- the file size.

Run once per implementation; each run is stored under its ``--label`` in
device_store.json in ``--output`` (default benchmarks/results). ``plaintext`` is the SQLite store of
commit a2df0fb^ (``git archive a2df0fb^ dmt_privacy`` unpacked first on
``sys.path``, the editable install's finder removed), ``encrypted`` the sealed
store, run one after the other on the same machine.
Usage: python benchmarks/device_store.py --label encrypted [--records N] [--repeat R]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from sharing_pipeline import FIELDS, QIS, device_records  # the same records and plan

from dmt_model.datasets import BOSTON_SCHEMA, load_boston
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.seal import generate_server_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    n = args.records
    boston = load_boston()
    plan = KAnonymizer(QIS, k=5).fit(boston).plan_
    policy = SharingPolicy(fields=FIELDS, plan=plan,
                           epsilon={"MEDV": 1.0}, required_k=5, fraction=0.5)
    public = generate_server_key().public_key()
    keyed = "key" in inspect.signature(LocalStore).parameters
    opts: dict[str, Any] = {"key": LocalStore.generate_key()} if keyed else {}  # type: ignore[attr-defined]
    tmp = Path(tempfile.mkdtemp(prefix="dmt-store-bench-"))
    times: dict[str, list[float]] = {}

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    size = 0
    for run in range(args.repeat):
        path = tmp / f"device-{run}.db"
        frame = device_records(boston, n, run)

        def create(path: Path = path, frame: pd.DataFrame = frame) -> LocalStore:
            store = LocalStore(path, schema=BOSTON_SCHEMA, user_id="bench",
                               epsilon_budget=1e6, **opts)
            store.add_records(frame)
            store.ledger  # noqa: B018  (the budget is stored when the ledger is first opened)
            return store

        store = clock(f"create + add {n} records", create)
        store.close()

        def reopen(path: Path = path) -> LocalStore:
            store = LocalStore(path, **opts)
            store.records()
            return store

        store = clock(f"open + read {n} records", reopen)
        result = clock(f"share() of {n // 2} records (plan, DP, seal, outbox)",
                       lambda store=store: share(store, policy, public))
        clock("acknowledge the package", lambda s=store, r=result: s.acknowledge(r.package_id))
        extra = device_records(boston, 1, 1000 + run)
        clock(f"small write: add 1 record to {n}",
              lambda s=store, e=extra: s.add_records(e))
        store.close()
        size = sum(p.stat().st_size for p in tmp.glob(f"device-{run}.db*"))
    rows = [{"stage": name, "seconds": statistics.median(values)}
            for name, values in times.items()]
    path = args.output / "device_store.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[args.label] = {
        "records": n, "repeat": args.repeat, "file_bytes": size, "stages": rows,
        "machine": f"{platform.machine()} python {platform.python_version()}",
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.label}: {n} records, file {size / 1e6:.2f} MB")
    for row in rows:
        print(f"  {row['stage']:<55} {row['seconds'] * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
