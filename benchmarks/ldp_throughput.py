"""Local-DP throughput: 1,000,000 numeric values at ε = 1, this SDK and its peers in one run.

Every method perturbs the same values in [0, 1] (sensitivity 1, ε = 1):

* dmt DiscreteLaplace: clamp, snap to the 2**-10 grid, discrete Laplace
  noise from os.urandom, vectorized (floating-point safe);
* dmt LocalDPPerturber: the same through the DataFrame transformer
  (validation, receipt, a SQLite ledger charge);
* numpy Laplace, vectorized: textbook float Laplace, NOT floating-point safe
  and not from a CSPRNG (a speed ceiling, not a peer);
* diffprivlib Laplace, per-value loop (not floating-point safe);
* diffprivlib Snapping, per-value loop (floating-point safe);
* OpenDP vector Laplace on a 2**-10 grid (``make_laplace``, k=-10; safe).

Writes ldp_throughput.json and ldp_throughput.png into ``--output`` (default
benchmarks/results).
Usage: python benchmarks/ldp_throughput.py [--values N] [--peer-values N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from dmt_privacy import Field, Schema
from dmt_privacy.dp import DiscreteLaplace, LocalDPPerturber, PrivacyLedger

RESULTS = Path(__file__).resolve().parent / "results"
EPSILON = 1.0
GRID = 2.0**-10


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--peer-values", type=int, default=None,
                        help="values for the slow per-value peers (default: --values)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats of the vectorized runs")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    n = args.values
    n_peer = args.peer_values or n
    x = np.random.default_rng(0).random(n)
    rows: list[dict[str, object]] = []

    def record(method: str, safe: bool, values: int, times: list[float], note: str = "") -> None:
        best, median = min(times), statistics.median(times)
        rows.append({"method": method, "floating_point_safe": safe, "values": values,
                     "seconds_best": best, "seconds_median": median,
                     "values_per_second": values / median, "note": note})
        print(f"  {method:<44} {values / median / 1e6:10.3f} M values/s", flush=True)

    print(f"{n:,} values at ε = {EPSILON}, sensitivity 1, grid 2^-10")
    # --- this SDK ---------------------------------------------------------------------------
    mech = DiscreteLaplace(epsilon=EPSILON, bounds=(0.0, 1.0), grid=GRID)
    out = mech.randomise(x)
    units = np.rint(out / GRID)
    assert (units * GRID == out).all(), "an output is off the grid"
    record("dmt DiscreteLaplace (vectorized, os.urandom)", True, n,
           timed(lambda: mech.randomise(x), args.repeat))
    schema = Schema((Field("v", "numeric", bounds=(0.0, 1.0), grid=GRID),))
    frame = pd.DataFrame({"v": x})
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(Path(tmp) / "ledger.db", user_id="bench", epsilon_budget=1e9)
        perturber = LocalDPPerturber(schema, epsilon={"v": EPSILON}, ledger=ledger).fit()
        record("dmt LocalDPPerturber (DataFrame + ledger)", True, n,
               timed(lambda: perturber.transform(frame), args.repeat))
        ledger.close()
    # --- the speed ceiling -------------------------------------------------------------------
    rng = np.random.default_rng(1)
    record("numpy Laplace, vectorized (NOT safe)", False, n,
           timed(lambda: x + rng.laplace(0.0, 1.0 / EPSILON, n), args.repeat))
    # --- peers -------------------------------------------------------------------------------
    from diffprivlib.mechanisms import Laplace, Snapping

    xs = x[:n_peer]
    lap = Laplace(epsilon=EPSILON, sensitivity=1.0)
    record("diffprivlib Laplace, per-value loop", False, n_peer,
           timed(lambda: [lap.randomise(v) for v in xs], 1))
    snap = Snapping(epsilon=EPSILON, sensitivity=1.0, lower=0.0, upper=1.0)
    record("diffprivlib Snapping, per-value loop (safe)", True, n_peer,
           timed(lambda: [snap.randomise(v) for v in xs], 1))
    import opendp.prelude as dp

    dp.enable_features("contrib")
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False), size=n_peer),
                             dp.l1_distance(T=float), scale=1.0 / EPSILON, k=-10)
    values = xs.tolist()
    record("OpenDP vector Laplace, 2^-10 grid (safe)", True, n_peer,
           timed(lambda: meas(values), 1))

    by = {r["method"]: r["values_per_second"] for r in rows}
    ours = by["dmt DiscreteLaplace (vectorized, os.urandom)"]
    ratios = {
        "vs diffprivlib Laplace loop": ours / by["diffprivlib Laplace, per-value loop"],
        "vs diffprivlib Snapping loop": ours / by["diffprivlib Snapping, per-value loop (safe)"],
        "vs OpenDP vector Laplace": ours / by["OpenDP vector Laplace, 2^-10 grid (safe)"],
    }
    targets = {"values_per_second >= 5e6": ours >= 5e6,
               "ratio >= 30x diffprivlib and OpenDP": min(ratios.values()) >= 30}

    print()
    print("| method | floating-point safe | values | values/s | dmt speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        vps = float(r["values_per_second"])  # type: ignore[arg-type]
        print(f"| {r['method']} | {'yes' if r['floating_point_safe'] else 'no'} | "
              f"{r['values']:,} | {vps / 1e6:.3f} M | {ours / vps:.1f}× |")
    print()
    for k, v in ratios.items():
        print(f"dmt DiscreteLaplace {k}: {v:.0f}×")
    for k, ok in targets.items():
        print(f"target {k}: {'met' if ok else 'NOT met'}")

    args.output.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "ldp_throughput",
        "epsilon": EPSILON, "grid": GRID, "values": n, "peer_values": n_peer,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "rows": rows, "ratios": ratios, "targets_met": targets,
    }
    (args.output / "ldp_throughput.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = [str(r["method"]) for r in rows]
    vps = [float(r["values_per_second"]) for r in rows]  # type: ignore[arg-type]
    colors = [
        "#1f77b4" if "dmt" in str(r["method"])
        else ("#ff7f0e" if r["floating_point_safe"] else "#bbbbbb")
        for r in rows
    ]
    bars = ax.barh(names[::-1], vps[::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("values per second (log scale)")
    ax.set_title(f"Local DP throughput, {n:,} values at ε = 1, one run\n"
                 "blue: dmt (safe)   orange: safe peers   grey: not floating-point safe",
                 fontsize=10)
    for bar, v in zip(bars, vps[::-1], strict=True):
        ax.text(v * 1.08, bar.get_y() + bar.get_height() / 2, f"{v / 1e6:.2f} M/s",
                va="center", fontsize=8)
    ax.set_xlim(min(vps) / 2, max(vps) * 6)
    fig.tight_layout()
    fig.savefig(args.output / "ldp_throughput.png", dpi=120)
    print(f"wrote {args.output / 'ldp_throughput.json'} and ldp_throughput.png")


if __name__ == "__main__":
    main()
