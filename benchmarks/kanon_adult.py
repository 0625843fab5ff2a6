"""k-anonymity on Adult: dmt's KAnonymizer vs anonypy (run here) and ARX (quoted).

Adult (30,162 rows), quasi-identifiers age, sex, race, marital-status,
education, native-country, workclass, occupation; sensitive salary-class.
For each setting: wall time, NCP (docs/targets.md definition), suppressed
rows, distinct l and EMD t achieved. dmt runs twice: with the ARX
hierarchies for the categorical fields ("hier": classes lifted to their
lowest common ancestor, the figure to compare with ARX) and without
("sets": intervals and value sets, the figure to compare with anonypy as
released). anonypy's partitions are measured with the same metric code, as
released and lifted to the hierarchies. dmt's "regions" NCP is the same plan's release
by the tree's regions instead of each class's tightest generalization (the plan widened
to the schema's age bounds, the same records released by the labels fit gave them;
README, *What a released interval's ends say*).

Run: .venv/bin/python benchmarks/kanon_adult.py [--no-anonypy]
Writes kanon_adult.json into ``--output`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from adult import ADULT, QIS, SENSITIVE, available, load_adult

from dmt_model.datasets import ADULT_SCHEMA
from dmt_privacy.anonymity import Hierarchy, KAnonymizer, information_loss
from dmt_privacy.anonymity.constraints import emd_hierarchical

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# docs/targets.md: ARX 3.9.2 global + local recoding (NCP, suppressed rows, CPU s).
ARX = {
    "k=5": (0.175, 0, 2.8), "k=10": (0.219, 4, 3.1), "k=50": (0.276, 71, 3.3),
    "k=100": (0.355, 14, 2.7), "k=5,l=2": (0.336, 2644, 3.4), "k=5,t=0.2": (0.497, 4443, 4.2),
}
# docs/targets.md: anonypy 0.2.1 (CPU s; NCP as released / lifted), measured earlier.
ANONYPY_QUOTED = {"k=5": (37.7, 0.032, 0.174), "k=10": (19.7, 0.058, 0.280),
                  "k=50": (4.3, 0.158, 0.559), "k=100": (2.9, 0.220, 0.674)}
SETTINGS = [
    ("k=5", {"k": 5}), ("k=10", {"k": 10}), ("k=50", {"k": 50}), ("k=100", {"k": 100}),
    ("k=5,l=2", {"k": 5, "l": 2}), ("k=5,t=0.2", {"k": 5, "t": 0.2}),
]


def class_l_t(released: pd.DataFrame, original: pd.DataFrame) -> tuple[float, float]:
    """Distinct l and max EMD (equal distance) of salary-class over released classes."""
    from dmt_privacy.anonymity import equivalence_classes

    kept = released[QIS].notna().any(axis=1).to_numpy()
    cls = equivalence_classes(released.loc[kept], QIS)
    values, sens = np.unique(original.loc[kept, SENSITIVE].to_numpy(), return_inverse=True)
    counts = np.zeros((cls.max() + 1, len(values)))
    np.add.at(counts, (cls, sens), 1)
    q = np.bincount(sens, minlength=len(values)) / len(sens)
    flat = Hierarchy(rows=tuple((str(v),) for v in values))
    return float((counts > 0).sum(axis=1).min()), float(emd_hierarchical(counts, q, flat).max())


def run_dmt(df, hierarchies, params):
    est = KAnonymizer(QIS, sensitive=SENSITIVE, hierarchies=hierarchies, **params)
    start = time.perf_counter()
    out = est.fit_transform(df)
    wall = time.perf_counter() - start
    rep = est.report_
    il = information_loss(out, df, QIS, hierarchies=hierarchies, k=params["k"])
    assert abs(il.ncp - rep.ncp) < 1e-9, (il.ncp, rep.ncp)
    # by the fitted labels: the records fit suppressed stay suppressed (README)
    regions = est.plan_.widened({"age": ADULT_SCHEMA["age"].bounds}).release(df, est.labels_)
    by_regions = information_loss(regions, df, QIS, hierarchies=hierarchies, k=params["k"])
    return {
        "wall_s": wall, "ncp": rep.ncp, "ncp_by_attribute": dict(rep.ncp_by_attribute),
        "suppressed": rep.n_suppressed, "classes": rep.n_classes,
        "l_achieved": rep.l_achieved, "t_achieved": rep.t_achieved,
        "discernibility": rep.discernibility, "average_class_size": rep.average_class_size,
        "ncp_regions": by_regions.ncp,
    }


def run_anonypy(df, hierarchies, params):
    from anonypy import mondrian

    frame = df.copy()
    for q in QIS:
        if q != "age":
            frame[q] = frame[q].astype("category")
    frame[SENSITIVE] = frame[SENSITIVE].astype("category")
    model = mondrian.Mondrian(frame, QIS, SENSITIVE)
    start_cpu, start = time.process_time(), time.perf_counter()
    partitions = model.partition(params["k"], params.get("l", 0), params.get("t", 0.0))
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    # Rebuild anonypy's release (numeric min-max, categorical value set) per record.
    released = df.copy()
    age_lo = np.empty(len(df))
    age_hi = np.empty(len(df))
    sets = {q: np.empty(len(df), dtype=object) for q in QIS if q != "age"}
    pos = pd.Series(np.arange(len(df)), index=df.index)
    for part in partitions:
        rows = pos[part].to_numpy()
        age_lo[rows] = df["age"].to_numpy()[rows].min()
        age_hi[rows] = df["age"].to_numpy()[rows].max()
        for q in sets:
            members = frozenset(df[q].to_numpy()[rows].tolist())
            for r in rows:
                sets[q][r] = members
    released["age"] = pd.arrays.IntervalArray.from_arrays(age_lo, age_hi, closed="both")
    for q, col in sets.items():
        released[q] = col
    as_released = information_loss(released, df, QIS, k=params["k"])
    lifted = information_loss(released, df, QIS, hierarchies=hierarchies, k=params["k"])
    l_ach, t_ach = class_l_t(released, df)
    return {"wall_s": wall, "cpu_s": cpu, "ncp_as_released": as_released.ncp,
            "ncp_lifted": lifted.ncp, "suppressed": 0, "classes": as_released.n_classes,
            "l_achieved": l_ach, "t_achieved": t_ach}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-anonypy", action="store_true", help="skip the anonypy runs")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    if not available():
        print(f"Adult not found at {ADULT}", file=sys.stderr)
        return 1
    df, hier = load_adult()
    KAnonymizer(QIS, k=10).fit(df)  # warm-up (imports, caches)
    results = []
    for name, params in SETTINGS:
        arx = dict(zip(("ncp", "suppressed", "cpu_s"), ARX[name], strict=True))
        row = {"setting": name, "arx_quoted": arx}
        row["dmt_hier"] = run_dmt(df, hier, params)
        row["dmt_sets"] = run_dmt(df, None, params)
        if name in ANONYPY_QUOTED:
            row["anonypy_quoted"] = dict(zip(("cpu_s", "ncp_as_released", "ncp_lifted"),
                                             ANONYPY_QUOTED[name], strict=False))
        if not args.no_anonypy:
            row["anonypy"] = run_anonypy(df, hier, params)
        results.append(row)
        print_row(row)
    out = {"dataset": "adult", "rows": len(df), "quasi_identifiers": QIS, "sensitive": SENSITIVE,
           "python": platform.python_version(), "machine": platform.machine(),
           "results": results}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "kanon_adult.json").write_text(json.dumps(out, indent=2))
    print_table(results)
    return 0


def print_row(row):
    h, s = row["dmt_hier"], row["dmt_sets"]
    msg = (f"{row['setting']:<10} dmt hier {h['wall_s']:.3f}s NCP {h['ncp']:.4f} "
           f"(regions {h['ncp_regions']:.4f}) | dmt sets {s['wall_s']:.3f}s NCP {s['ncp']:.4f} "
           f"(regions {s['ncp_regions']:.4f})")
    if "anonypy" in row:
        a = row["anonypy"]
        msg += f" | anonypy {a['wall_s']:.1f}s NCP {a['ncp_as_released']:.4f}/{a['ncp_lifted']:.4f}"
    print(msg, flush=True)


def print_table(results):
    head = ("| setting | dmt hier: wall s, NCP, suppr., l, t | ARX (quoted): NCP, suppr., CPU s "
            "| dmt sets: wall s, NCP, l, t | anonypy (this run): wall s, NCP released / lifted, "
            "l, t | dmt by regions: NCP hier / sets |")
    print()
    print(head)
    print("|---|---|---|---|---|---|")
    for r in results:
        h, s, x = r["dmt_hier"], r["dmt_sets"], r["arx_quoted"]
        a = r.get("anonypy")
        an = (f"{a['wall_s']:.1f}, {a['ncp_as_released']:.3f} / {a['ncp_lifted']:.3f}, "
              f"{a['l_achieved']:g}, {a['t_achieved']:.3f}") if a else "not run"
        print(f"| {r['setting']} | {h['wall_s']:.3f}, {h['ncp']:.3f}, {h['suppressed']}, "
              f"{h['l_achieved']:g}, {h['t_achieved']:.3f} | {x['ncp']}, {x['suppressed']}, "
              f"{x['cpu_s']} | {s['wall_s']:.3f}, {s['ncp']:.3f}, {s['l_achieved']:g}, "
              f"{s['t_achieved']:.3f} | {an} | {h['ncp_regions']:.3f} / {s['ncp_regions']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
