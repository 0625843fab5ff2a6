"""k-anonymity on Adult through the device -> server path, beside fit_transform and ARX.

The server fits a plan on 30 % of Adult (seeded split), widens it to the
schema's bounds (age 17-90) and ships it; each of the other 70 % of records
is one device's share, generalized by the plan on the device and sent as its
own package; the server releases classes through the ReleaseRule (k distinct
packages, the plan's l and t). Reported per setting: information loss (NCP,
docs/targets.md) of the released records and of all 70 % with held-back
records counted as suppressed (NCP 1), the held-back share, times (fit, apply
to all, apply record by record on a sample, release), the classes released
and how many of them a k-only release would have let through with l = 1 or
EMD above t. Beside it: fit_transform on the whole table, and ARX 3.9.2's
local recoding as quoted in docs/targets.md.

``--million``: entropy l = 2 (k = 10) on one million rows (Adult resampled)
with fit_transform, timed.

Run: .venv/bin/python benchmarks/anonymity_device_path.py [--million]
Writes anonymity_device_path.json into ``--output`` (default benchmarks/results).
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

from dmt_privacy.anonymity import (
    Hierarchy,
    KAnonymizer,
    ReleaseRule,
    information_loss,
    release_classes,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARX_NCP = {"k=5": 0.175, "k=10": 0.219, "k=50": 0.276, "k=5,l=2": 0.336, "k=5,t=0.2": 0.497}
SETTINGS = [("k=5", {"k": 5}), ("k=10", {"k": 10}), ("k=50", {"k": 50}),
            ("k=5,l=2", {"k": 5, "l": 2}), ("k=5,t=0.2", {"k": 5, "t": 0.2})]


def violations(released: pd.DataFrame, rule: ReleaseRule) -> dict[str, int]:
    """Classes (by generalized QIs) with one sensitive value, or EMD above the plan's t."""
    groups = released.groupby([released[q].astype(str) for q in QIS], sort=False)
    l1 = t_over = 0
    reference = dict(rule.reference or ())
    for _, cls in groups:
        values = cls[SENSITIVE].value_counts(normalize=True)
        l1 += int(len(values) == 1)
        if rule.t is not None:
            emd = 0.5 * sum(abs(values.get(v, 0.0) - reference.get(v, 0.0))
                            for v in set(values.index) | set(reference))
            t_over += int(emd > rule.t + 1e-9)
    return {"classes": groups.ngroups, "l_1": l1, "emd_above_t": t_over}


def device_path(df: pd.DataFrame, hier: dict[str, Hierarchy], params: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    cut = int(0.3 * len(df))
    proxy, devices = df.iloc[order[:cut]], df.iloc[order[cut:]]
    started = time.perf_counter()
    est = KAnonymizer(QIS, sensitive=SENSITIVE, hierarchies=hier, **params).fit(proxy)
    plan = est.plan_.widened({"age": (17.0, 90.0)})
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    applied = plan.apply(devices)
    apply_s = time.perf_counter() - started
    sample = devices.iloc[:300]
    started = time.perf_counter()
    one_by_one = [plan.apply(sample.iloc[[i]]).class_ids[0] for i in range(len(sample))]
    per_record_ms = (time.perf_counter() - started) / len(sample) * 1e3
    assert np.array_equal(one_by_one, applied.class_ids[:300])  # record by record = batch
    shared = applied.data.drop(index=applied.suppressed).copy()
    shared["package"] = np.arange(len(shared))  # one record per device and package
    rule = ReleaseRule.from_plan(plan)
    started = time.perf_counter()
    released, held = release_classes(shared, QIS, rule.k, package_column="package", rule=rule)
    release_s = time.perf_counter() - started
    k_only, _ = release_classes(shared, QIS, rule.k, package_column="package")
    originals = devices.loc[released.index]
    il_released = information_loss(released.drop(columns="package"), originals, QIS,
                                   hierarchies=hier, k=params["k"])
    n_held = len(held) + len(applied.suppressed)
    # NCP is a mean over records: a held-back record counts as suppressed (NCP 1)
    ncp_all = (il_released.ncp * len(released) + n_held) / len(devices)
    return {
        "fit_s_on_30pct": fit_s, "apply_s_all_70pct": apply_s,
        "apply_ms_per_record": per_record_ms, "release_s": release_s,
        "records_70pct": len(devices), "suppressed_by_plan": len(applied.suppressed),
        "held_back": n_held, "held_back_share": n_held / len(devices),
        "ncp_released": il_released.ncp, "ncp_all_held_back_as_suppressed": ncp_all,
        "released": violations(released, rule),
        "k_only_release_would_have": violations(k_only, rule),
    }


def whole_table(df: pd.DataFrame, hier: dict[str, Hierarchy], params: dict) -> dict:
    est = KAnonymizer(QIS, sensitive=SENSITIVE, hierarchies=hier, **params)
    started = time.perf_counter()
    est.fit_transform(df)
    return {"wall_s": time.perf_counter() - started, "ncp": est.report_.ncp,
            "suppressed": est.report_.n_suppressed}


def million(df: pd.DataFrame, hier: dict[str, Hierarchy]) -> dict:
    big = df.sample(n=1_000_000, replace=True, random_state=0).reset_index(drop=True)
    est = KAnonymizer(QIS, sensitive=SENSITIVE, hierarchies=hier, k=10, l=2,
                      l_kind="entropy", max_suppression=0.6)
    started = time.perf_counter()
    out = est.fit_transform(big)
    wall = time.perf_counter() - started
    sup = out["age"].isna()
    return {"rows": len(big), "wall_s": wall, "ncp": est.report_.ncp,
            "suppressed": est.report_.n_suppressed,
            "suppressed_sensitive_withheld": bool(out.loc[sup, SENSITIVE].isna().all()),
            "entropy_l_achieved": est.report_.entropy_l_achieved}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also entropy l=2 at 1M rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    if not available():
        print(f"Adult not found at {ADULT}", file=sys.stderr)
        return 1
    df, hier = load_adult()
    rows = []
    for name, params in SETTINGS:
        row = {"setting": name, "device_path": device_path(df, hier, params, args.seed),
               "fit_transform_whole_table": whole_table(df, hier, params),
               "arx_local_recoding_ncp_quoted": ARX_NCP.get(name)}
        rows.append(row)
        d = row["device_path"]
        print(f"{name:10} device path: NCP released {d['ncp_released']:.3f}, all "
              f"{d['ncp_all_held_back_as_suppressed']:.3f}, held back "
              f"{d['held_back_share']:.1%}, l=1 classes {d['released']['l_1']} (k-only "
              f"{d['k_only_release_would_have']['l_1']}), EMD>t "
              f"{d['released']['emd_above_t']} (k-only "
              f"{d['k_only_release_would_have']['emd_above_t']}); fit "
              f"{d['fit_s_on_30pct']:.2f} s, {d['apply_ms_per_record']:.2f} ms/record | "
              f"fit_transform NCP {row['fit_transform_whole_table']['ncp']:.3f} | ARX "
              f"{row['arx_local_recoding_ncp_quoted']}")
    result: dict = {"machine": platform.platform(), "python": platform.python_version(),
                    "seed": args.seed, "settings": rows}
    if args.million:
        result["entropy_l2_1M"] = million(df, hier)
        print("entropy l=2, 1M rows:", result["entropy_l2_1M"])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "anonymity_device_path.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
