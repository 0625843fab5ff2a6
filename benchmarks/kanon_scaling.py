"""Scaling of dmt's KAnonymizer: Adult resampled to 100k, 300k and 1M rows at k=10.

Each size runs in a fresh subprocess so that peak memory (ru_maxrss) is the
run's own. Reports wall time of fit_transform and peak resident memory, with
the ARX hierarchies for the categorical quasi-identifiers. Writes
kanon_scaling.json and kanon_scaling.png into ``--output`` (default
benchmarks/results).

Run: .venv/bin/python benchmarks/kanon_scaling.py [--sizes 30000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from adult import ADULT, QIS, available, load_adult

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = [100_000, 300_000, 1_000_000]
K = 10


def child(n: int) -> None:

    from dmt_privacy.anonymity import KAnonymizer

    df, hier = load_adult()
    df = df.sample(n=n, replace=True, random_state=0).reset_index(drop=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    est = KAnonymizer(QIS, sensitive="salary-class", k=K, hierarchies=hier)
    start = time.perf_counter()
    out = est.fit_transform(df)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep = est.report_
    print(json.dumps({"rows": n, "k": K, "wall_s": wall, "peak_rss_mib": peak / 1024,
                      "rss_before_fit_mib": base / 1024, "ncp": rep.ncp,
                      "classes": rep.n_classes, "suppressed": rep.n_suppressed,
                      "min_class_size": rep.min_class_size, "out_rows": len(out)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES,
                        help="rows per run (default 100000 300000 1000000)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the plot from OUTPUT/kanon_scaling.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((args.output / "kanon_scaling.json").read_text())
        plot(saved["results"], args.output / "kanon_scaling.png")
        return 0
    if args.child is not None:
        child(args.child)
        return 0
    if not available():
        print(f"Adult not found at {ADULT}", file=sys.stderr)
        return 1
    results = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{n:>9,} rows  k={K}  {row['wall_s']:6.2f} s  peak {row['peak_rss_mib']:7.0f} MiB"
              f"  NCP {row['ncp']:.4f}  classes {row['classes']:,}  suppressed "
              f"{row['suppressed']}", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "kanon_scaling.json").write_text(json.dumps({"results": results}, indent=2))
    plot(results, args.output / "kanon_scaling.png")
    print("\n| rows | wall s | peak MiB | NCP | classes |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['wall_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['ncp']:.4f} "
              f"| {r['classes']:,} |")
    return 0


def plot(results: list[dict], path: Path) -> None:
    """Wall time and peak memory in two panels, each against its target, sizes on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in results]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, values, target, unit, label, colour in (
            (time_ax, [r["wall_s"] for r in results], 30, "s", "wall time of fit_transform (s)",
             "tab:blue"),
            (memory_ax, [r["peak_rss_mib"] / 1024 for r in results], 4, "GiB",
             "peak resident memory (GiB)", "tab:red")):
        ax.plot(rows, values, "o-", color=colour)
        for x, y in zip(rows, values, strict=True):
            ax.annotate(f"{y:.2f}", (x, y), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=8)
        ax.axhline(target, color=colour, ls=":", lw=1)
        ax.text(rows[0], target, f" target {target} {unit}", va="bottom", fontsize=8, color=colour)
        ax.set_ylim(0, target * 1.1)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(rows, [f"{n / 1000:,.0f}k" if n < 1_000_000 else f"{n / 1e6:g}M"
                             for n in rows])
        ax.set_xlabel("rows (Adult resampled)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"dmt KAnonymizer, k={K}, 8 quasi-identifiers with ARX hierarchies")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
