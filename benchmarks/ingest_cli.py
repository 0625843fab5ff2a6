"""``dmt ingest`` (the batch path, :func:`dmt_model.server.ingest`) on SQLite: group write
against one transaction per package, interleaved in one process.

    .venv/bin/python benchmarks/ingest_cli.py [--packages 2000] [--rounds 3]

"per package" is the old loop (:meth:`Ingestor.ingest_one` for each file, one
transaction each); "grouped" is :func:`ingest` as it now is. Each round
ingests the same sealed files into a fresh database with both, alternating
which goes first. Writes ``ingest_cli.json`` into ``--output`` (default
benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dmt_model.server import ServerPolicy, ingest
from dmt_model.server.ingest import Ingestor, iter_sources
from dmt_privacy import Field, Schema
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = Schema((
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
    Field("score", "numeric", bounds=(0, 1000)),
))
POLICY = ServerPolicy(SCHEMA, min_k=3)


def _per_package(folder: Path, db: str, key) -> int:
    ingestor = Ingestor(db, key, POLICY)
    ingestor.data_key()
    accepted = 0
    for name, data in iter_sources(folder, max_bytes=POLICY.max_bytes):
        assert data is not None
        accepted += ingestor.ingest_one(data, name).status == "accepted"
    return accepted


def _grouped(folder: Path, db: str, key) -> int:
    return len(ingest(folder, db, key, POLICY).accepted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    key = generate_server_key()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="dmt-ingest-bench-"))
    folder = work / "in"
    folder.mkdir()
    for i in range(args.packages):
        zips = [frozenset({"a", "b"}) if z else frozenset({"c"}) for z in rng.integers(0, 2, 3)]
        package = SharePackage.create(SCHEMA.schema_id, {
            "zip": zips, "score": list(rng.uniform(0, 1000, 3))}, PrivacyReceipt(k=3))
        (folder / f"{i:06d}.dmt").write_bytes(seal_package(package, key.public_key()))
    runs: dict[str, list[float]] = {"per_package": [], "grouped": []}
    paths = {"per_package": _per_package, "grouped": _grouped}
    for r in range(args.rounds):
        for name in (("per_package", "grouped") if r % 2 == 0 else ("grouped", "per_package")):
            db = f"sqlite:///{work / f'{name}-{r}.db'}"
            start = time.perf_counter()
            assert paths[name](folder, db, key) == args.packages
            runs[name].append(args.packages / (time.perf_counter() - start))
            print(f"round {r} {name:12s} {runs[name][-1]:8.0f} packages/s")
    medians = {name: statistics.median(v) for name, v in runs.items()}
    ratio = medians["grouped"] / medians["per_package"]
    result = {"packages": args.packages, "ratio": ratio, "median_packages_per_s": medians,
              "runs": runs}
    print(f"grouped / per package: {ratio:.2f}x")
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / "ingest_cli.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
