"""Scaling of dmt's KAnonymizer: Adult resampled to 100k, 300k and 1M rows at k=10.

Each size runs in a fresh subprocess so that peak memory (ru_maxrss) is the
run's own. Reports wall time of fit_transform and peak resident memory, with
the ARX hierarchies for the categorical quasi-identifiers. Writes
benchmarks/results/kanon_scaling.json and kanon_scaling.png.

Run: .venv/bin/python benchmarks/kanon_scaling.py
"""

from __future__ import annotations

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
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    if not available():
        print(f"Adult not found at {ADULT}", file=sys.stderr)
        return 1
    results = []
    for n in SIZES:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{n:>9,} rows  k={K}  {row['wall_s']:6.2f} s  peak {row['peak_rss_mib']:7.0f} MiB"
              f"  NCP {row['ncp']:.4f}  classes {row['classes']:,}  suppressed "
              f"{row['suppressed']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kanon_scaling.json").write_text(json.dumps({"results": results}, indent=2))
    plot(results)
    print("\n| rows | wall s | peak MiB | NCP | classes |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['wall_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['ncp']:.4f} "
              f"| {r['classes']:,} |")
    return 0


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in results]
    fig, ax1 = plt.subplots(figsize=(6.4, 4.0))
    ax1.plot(rows, [r["wall_s"] for r in results], "o-", color="tab:blue", label="wall time")
    ax1.axhline(30, color="tab:blue", ls=":", lw=1, label="target 30 s")
    ax1.set_xscale("log")
    ax1.set_xlabel("rows (Adult resampled)")
    ax1.set_ylabel("wall time of fit_transform (s)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(rows, [r["peak_rss_mib"] / 1024 for r in results], "s--", color="tab:red",
             label="peak memory")
    ax2.axhline(4, color="tab:red", ls=":", lw=1, label="target 4 GiB")
    ax2.set_ylabel("peak resident memory (GiB)", color="tab:red")
    ax1.set_ylim(0, 32)
    ax2.set_ylim(0, 4.4)
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax1.set_title(f"dmt KAnonymizer, k={K}, 8 quasi-identifiers with ARX hierarchies")
    fig.tight_layout()
    fig.savefig(RESULTS / "kanon_scaling.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
