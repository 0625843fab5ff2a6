"""Which rule should devices personalize under? The server measures it on devices' records.

A device with fewer than 30 records to score keeps the strongest prior unless, from 6
records, a weaker one is better at 99 % on 6 or 7 records and 97.5 % from 8 (the default
rule: since 4 December at 97.5 %; since 5 December also better than the strongest prior's
update, from 30 records at 90 %, and below 6 records never; since 6 December at 99 % on 6
or 7): users with nothing to learn no longer end worse off, but users who differ from the
proxy keep only part of their gain.
No device can tell on its few records which kind of user it is; a population of devices
can. ``compare_personal_rules`` personalizes a version on held-out devices' records under
the default rule and under the task's open rule (``open_rule_for``: for a regression
``OPEN_RULE``, any prior, kept when its mean held-out error is lower, the rule until 4
December; for a classifier ``CLASSIFIER_OPEN_RULE``, any prior and no label shift asked,
at 90 %, the rule until 5 December), and the server signs the open rule into the release
only if it is better across devices at 90 % (``ModelRegistry.check_personal_rule``,
``personal_rule_for``).

The protocol is model_quality's simulated users: 20 users a seed of each regression data
set, appraisal spread h ∈ {0, 0.15, 0.3} (h = 0: users drawn like the proxy, nothing to
learn), v1 trained on 80 % of the proxy. The server compares the rules on the records the
users shared (``shareable``, about half of each user's training records: what it holds
under raw or k-anonymous sharing); every user then personalizes v1 on all its training
records under the rule the release earned. Reports, per data set and h, the mean per-user
test RMSE's change from v1 under the default rule, the open rule and the server's choice,
the share of users worse off than v1, and in how many seeds the server chose the open
rule. Beside it (since 6 December), the choice a **device-side** check would make: the
same comparison on every record of each user, as devices comparing the rules on their own
records could report it (the way ``dmt_model.version_check`` reports on versions; not
built), without the randomized response such a private report adds, so an upper bound on
its power. And what that private report would choose (*private report*, also since 6
December): each device tells the bit "the open rule's held-out error is lower on my
records" by randomized response at ε = 1, as a version check's report does (a device that
cannot compare tells "not better"), and the server grants the open rule if the tally shows
a majority better at 90 % (``tally_version_checks``). Its chance of granting in a seed is
computed exactly from how many devices were better off (``claim_chance``); the column is
the users' expected error under it. A second table gives how often that report, and a
three-valued one (better, unchanged or worse; an exact sign test of "better" against
"worse"; not built either), would grant the open rule, at ε = 1, 4 and without noise. The
users the rules are compared on are the users who then personalize (the check reads only
what they shared, never their test records); in an app the check's devices are held out,
other devices of the same population. The confidence, 90 %, is the one the server's
version check uses (``compare_on_devices``). A scratch version of this script (halves
drawn at random) tried 75 % and 95 % on seeds 0–9: at 75 % the server then chose the open
rule for Boston at h = 0 in 2 of seeds 10–19, whose users lost 0.5 points against the
default; at 95 % it chose it for star98 at h = 0.3 in 1 of 10 seeds.

A classifier's users (Adult, digits; ``simulate_classifier_users``, 600 records among 20
users, at least 8 each, images without a hand of their own) differ in their label mixes
only: drawn like the proxy, or from a Dirichlet(α) mix, α ∈ {1, 0.3}. The errors are test
log losses.

    python benchmarks/personal_rule.py [--seeds 20] [--workers 2] [--datasets adult digits]

Writes ``benchmarks/results/personal_rule.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CLASSIFIERS = ("adult", "digits")
DATASETS = ("boston", "friedman", "star98", *CLASSIFIERS)
SPREADS = (0.0, 0.15, 0.3)
ALPHAS = (None, 1.0, 0.3)
#: records a classifier's 20 users share among them (a user's at least 8, a power law): few
#: records a user, where the default's guards bite
CLASSIFIER_RECORDS = 600
USERS = 20
RULES = ("default", "open", "server", "device-side", "private")
#: the ε of the private report's bit (a version check's)
PRIVATE_EPSILON = 1.0
#: the ε a three-valued report is tried at (inf: told as it is)
THREE_VALUED_EPSILONS = (1.0, 4.0, math.inf)


def run_one(task: tuple[str, float | None, int]) -> dict:
    """One seed of one data set for one population of users: each user's test error under
    v1 and each rule, and the server's comparison. ``population`` is the appraisal spread h
    of a regression's users, or the Dirichlet α of a classifier's users' label mixes
    (``None``: drawn like the proxy)."""
    import pandas as pd
    import torch

    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.datasets import (
        CLASSIFICATION_DATASETS,
        REGRESSION_DATASETS,
        simulate_classifier_users,
        simulate_users,
    )
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import (
        DeviceComparison,
        compare_personal_rules,
        featurizer_of,
        open_rule_for,
        personalized_many,
    )
    from dmt_model.server.retrain import validation_split

    torch.set_num_threads(1)
    name, population, seed = task
    started = time.perf_counter()
    if name in CLASSIFIERS:
        dataset = CLASSIFICATION_DATASETS[name]
        # hands (an image's rotation and stroke) left out: the populations differ in their
        # label mixes only, which is what a classifier's personal head can learn
        sim = simulate_classifier_users(
            dataset.load(), target=dataset.target, n_users=USERS, alpha=population,
            n_records=CLASSIFIER_RECORDS, min_records=8, image=dataset.style_field,
            max_rotation=0.0, max_stroke=0.0, seed=seed)
        config = dataset.config.__class__(**{**dataset.config.__dict__, "seed": seed})
    else:
        dataset = REGRESSION_DATASETS[name]
        sim = simulate_users(dataset.load(), n_users=USERS, spread=population, seed=seed,
                             location=dataset.location, target=dataset.target)
        config = TrainingConfig(seed=seed)
    proxy, _ = validation_split(sim.proxy, seed=seed)
    v1 = build_spec(train_foundation(proxy, dataset.schema, config),
                    updatable=UpdateSettings())
    featurizer = featurizer_of(v1)

    def error(model: object, user: object) -> float:  # test RMSE, or test log loss
        test = user.test  # type: ignore[attr-defined]
        return featurizer.task.test_error(predict_frame(model, test),
                                          featurizer.target_values(test))

    records = [pd.concat([u.shareable, u.private]) for u in sim.users]
    # the server's check reads what users shared; a device-side check (each device
    # comparing the rules on all of its records, as dmt_model.version_check does for
    # versions) would read every record, without the randomized response a private report
    # adds: an upper bound on its power
    found, device_side = (compare_personal_rules(v1, frames) for frames in (
        [u.shareable for u in sim.users], records))

    def figures(check: DeviceComparison) -> dict:
        return {"devices": check.devices, "t": check.t, "needed": check.needed,
                "default_error": check.error_before, "open_error": check.error_after,
                "open_better": check.better}

    out = {"dataset": name, "population": population, "seed": seed,
           "error_name": featurizer.task.error_name,
           "records": [len(r) for r in records],
           "v1": [error(v1, u) for u in sim.users],
           "check": figures(found), "check_device_side": figures(device_side),
           # each compared device's held-out error under the default rule less the open
           # rule's, on all its records: whether it would report the open rule better
           "device_side_differences": list(device_side.differences)}
    for rule_name, rule in (("default", None), ("open", open_rule_for(featurizer.task))):
        held = personalized_many(v1, records, rule=rule)
        out[rule_name] = [error(model, u) for (model, _), u in zip(held, sim.users, strict=True)]
    out["server"] = out["open" if found.better else "default"]
    out["device-side"] = out["open" if device_side.better else "default"]
    out["seconds"] = time.perf_counter() - started
    return out


def _population(name: str, population: float | None) -> str:
    if name in CLASSIFIERS:
        return "like the proxy" if population is None else f"α = {population:g}"
    return f"h = {population:g}"


def summarize(runs: list[dict]) -> list[dict]:
    """Per data set and population: each rule's mean change from v1 (the mean over seeds of
    the seed's mean per-user test error, against v1's), its std over seeds, the share of
    users worse off, and how often the server chose the open rule; for runs with each
    device's difference, the private report's expected change (``private``), its expected
    number of grants (``private_chosen``), the shares of users better and worse off under
    the open rule (``better_off_share``, ``worse_off_share``) and a three-valued report's
    expected number of grants at each ε (``three_valued_chosen``)."""
    rows = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        for population in dict.fromkeys(r["population"] for r in runs
                                        if r["dataset"] == name):
            cell = [r for r in runs if r["dataset"] == name and r["population"] == population]
            v1 = np.array([np.mean(r["v1"]) for r in cell])
            row = {"dataset": name, "population": population,
                   "users": _population(name, population), "seeds": len(cell),
                   "error_name": cell[0]["error_name"],
                   "records_median": float(np.median([n for r in cell for n in r["records"]])),
                   "v1": float(v1.mean()),
                   "open_chosen": int(sum(r["check"]["open_better"] for r in cell)),
                   "open_chosen_seeds": [r["seed"] for r in cell if r["check"]["open_better"]]}
            if "check_device_side" in cell[0]:  # (runs from before 6 December have none)
                row["device_side_chosen"] = int(sum(r["check_device_side"]["open_better"]
                                                    for r in cell))
            for rule in (r for r in RULES if r in cell[0]):
                change = np.array([_mean_error(r, rule) for r in cell]) / v1 - 1
                row[rule] = {"change": float(change.mean()), "change_std": float(change.std()),
                             "worse_off": float(np.mean([_worse_off(r, rule) for r in cell]))}
            if "device_side_differences" in cell[0]:  # (runs from before 6 December 13:00)
                grant = np.array([_private_grant(r) for r in cell])
                change = _expected(_mean_error, grant, cell) / v1 - 1
                row["private"] = {"change": float(change.mean()),
                                  "change_std": float(change.std()),
                                  "worse_off": float(_expected(_worse_off, grant, cell).mean())}
                row["private_chosen"] = float(grant.sum())
                # the shares of users whose records show the open rule better and worse: what
                # a report's power at more devices follows (claim_chance for one bit)
                for share, sign in (("better_off_share", 1), ("worse_off_share", -1)):
                    row[share] = float(np.mean([
                        np.sum(np.sign(r["device_side_differences"]) == sign) / len(r["v1"])
                        for r in cell]))
                row["three_valued_chosen"] = {
                    f"{epsilon:g}": float(sum(_three_valued_grant(r, epsilon) for r in cell))
                    for epsilon in THREE_VALUED_EPSILONS}
            rows.append(row)
    return rows


def _mean_error(run: dict, rule: str) -> float:
    return float(np.mean(run[rule]))


def _worse_off(run: dict, rule: str) -> float:
    """The share of the run's users worse off than v1 under ``rule``."""
    return float(np.mean(np.array(run[rule]) > np.array(run["v1"]) * (1 + 1e-9)))


def _expected(measure: Callable[[dict, str], float], grant: np.ndarray, runs: list[dict]
              ) -> np.ndarray:
    """Each run's ``measure`` under the open rule with its chance of a grant, else under the
    default rule."""
    return np.array([g * measure(r, "open") + (1 - g) * measure(r, "default")
                     for g, r in zip(grant, runs, strict=True)])


def _three_valued_grant(run: dict, epsilon: float, confidence: float = 0.9) -> float:
    """The chance a three-valued private report grants the open rule (not built; the
    question a report for classifiers would ask): every user tells "better", "unchanged"
    or "worse" under the open rule by randomized response over the three at ``epsilon``
    (``math.inf``: the truth), a user whose records could not be compared "unchanged", and
    the server grants it if an exact sign test of the "better" reports against the "worse"
    ones is significant at ``confidence``. Computed exactly: the chance of each count of
    "better" and "worse" reports, summed where the test grants."""
    differences = np.array(run["device_side_differences"])
    users = len(run["v1"])
    # (a difference that is not finite is a comparison that failed: "unchanged")
    signs = np.where(np.isfinite(differences), np.sign(differences), 0).astype(int)
    truths = [*signs, *[0] * (users - len(differences))]
    keep, other = 1.0, 0.0
    if not math.isinf(epsilon):  # the probabilities the SDK's mechanism draws with
        from dmt_privacy.dp import RandomizedResponse

        mechanism = RandomizedResponse(epsilon=epsilon, categories=(-1, 0, 1), field="rule")
        keep, other = mechanism.keep_probability, mechanism.flip_probability
    counts = np.zeros((users + 1, users + 1))  # [better reports, worse reports]
    counts[0, 0] = 1.0
    for truth in truths:  # one user's report: "better", "worse" or "unchanged"
        said = {1: (keep, other), -1: (other, keep), 0: (other, other)}[truth]
        counts = (np.pad(counts, ((1, 0), (0, 0)))[:-1] * said[0]
                  + np.pad(counts, ((0, 0), (1, 0)))[:, :-1] * said[1]
                  + counts * (1 - said[0] - said[1]))
    return float(counts[_sign_test_grants(users, confidence)].sum())


@functools.cache
def _sign_test_grants(users: int, confidence: float) -> np.ndarray:
    """Whether an exact one-sided sign test of b "better" reports against w "worse" ones is
    significant at ``confidence``, for every b and w of ``users`` reports."""
    from scipy.stats import binomtest

    grants = np.zeros((users + 1, users + 1), dtype=bool)
    for b in range(1, users + 1):
        for w in range(users + 1 - b):
            grants[b, w] = binomtest(b, b + w, 0.5, alternative="greater").pvalue < 1 - confidence
    return grants


def _private_grant(run: dict) -> float:
    """The chance a tally of the seed's users' private reports grants the open rule: every
    user reports, those whose records show the open rule's held-out error lower say
    "better" (told by randomized response at :data:`PRIVATE_EPSILON`)."""
    from dmt_model.version_check import claim_chance

    better_off = sum(d > 0 for d in run["device_side_differences"])
    return claim_chance(better_off, len(run["v1"]), epsilon=PRIVATE_EPSILON)


def markdown(rows: list[dict], seeds: int) -> str:
    lines = [f"Mean per-user test error (RMSE; a classifier's log loss) against v1 (± std "
             f"over {seeds} seeds; share of users worse off than v1), 20 users a seed; "
             "*server*: the rule the server signed after comparing both on the records users "
             "shared (open rule chosen in n of the seeds); *device-side*: the rule a check of "
             "every user's records would choose (each device comparing the rules on all its "
             "records, without the randomized response a private report adds); *private report*: "
             f"the users' expected error if each device told that comparison's bit by "
             f"randomized response at ε = {PRIVATE_EPSILON:g} and the server granted the open "
             "rule on a majority shown better at 90 % (open chosen: the expected number of "
             "seeds; its ± is the std over seeds of that expected error, without the chance of "
             "the grant itself); *records*: a user's median number of training records.",
             "", "| data set | users | records | v1 | default rule | open rule | server's choice "
             "| device-side choice | private report | open chosen (server / device-side / "
             "private) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[r]['change']:+.1%} ± {row[r]['change_std']:.1%} "
                 f"({row[r]['worse_off']:.0%})" if r in row else "—" for r in RULES]
        lines.append(f"| {row['dataset']} | {row['users']} | {row['records_median']:g} | "
                     f"{row['v1']:.4g} | " + " | ".join(cells)
                     + f" | {row['open_chosen']} / {row.get('device_side_chosen', '—')} / "
                     + (f"{row['private_chosen']:.1f}" if "private_chosen" in row else "—")
                     + f" of {row['seeds']} |")
    reported = [row for row in rows if "three_valued_chosen" in row]
    if reported:
        lines += ["", "Seeds (of the run's) in which a private report would grant the open "
                  "rule: *one bit*, the version check's question (\"lower on my records\", a "
                  "majority at 90 %); *three-valued* (not built): better, unchanged or worse, "
                  "an exact sign test of the \"better\" reports against the \"worse\" ones at "
                  "90 %, at each ε (*no noise*: told as it is). Expected numbers, computed "
                  "exactly from each user's comparison; *users*: the share better off / worse "
                  "off under the open rule on their own records (the rest unchanged, or too "
                  "few records to compare).",
                  "", "| data set | users | better / worse off | server's check | device-side "
                  "check | one bit, ε = 1 | three-valued, ε = 1 | ε = 4 | no noise |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in reported:
            chosen = row["three_valued_chosen"]
            lines.append(f"| {row['dataset']} | {row['users']} | {row['better_off_share']:.0%}"
                         f" / {row['worse_off_share']:.0%} | {row['open_chosen']} | "
                         f"{row['device_side_chosen']} | {row['private_chosen']:.1f} | "
                         + " | ".join(f"{chosen[f'{e:g}']:.1f}" for e in THREE_VALUED_EPSILONS)
                         + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    columns = min(len(names), 3)
    lines = -(-len(names) // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines),
                             squeeze=False)
    axes = grid.reshape(-1)
    for unused in axes[len(names):]:
        unused.set_visible(False)
    axes = axes[:len(names)]
    styles = {"default": ("tab:blue", "o", "default rule"),
              "open": ("tab:orange", "s", "open rule"),
              "server": ("tab:green", "D", "server's choice"),
              "device-side": ("tab:purple", "^", "device-side choice"),
              "private": ("tab:red", "v", f"private report (ε = {PRIVATE_EPSILON:g})")}
    for ax, name in zip(axes, names, strict=True):
        cell = [r for r in rows if r["dataset"] == name]
        x = np.arange(len(cell))
        drawn = [r for r in RULES if r in cell[0]]
        for k, rule in enumerate(drawn):
            color, marker, label = styles[rule]
            ax.errorbar(x + (k - (len(drawn) - 1) / 2) * 0.12,
                        [100 * r[rule]["change"] for r in cell],
                        yerr=[100 * r[rule]["change_std"] / np.sqrt(seeds) for r in cell],
                        color=color, marker=marker, linestyle="none", capsize=3, label=label)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(x, [r["users"] for r in cell], fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(f"test {cell[0]['error_name']} vs v1 (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[columns - 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"Personal updates under each rule ({seeds} seeds, 20 users each; "
                 "bars: standard error)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--spreads", type=float, nargs="+", default=list(SPREADS),
                        help="a regression's users' appraisal spreads h (default 0 0.15 0.3)")
    parser.add_argument("--alphas", nargs="+", default=["none", *map(str, ALPHAS[1:])],
                        help="a classifier's users' label-mix Dirichlet α; 'none': drawn "
                             "like the proxy (default none 1 0.3)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    alphas = [None if a == "none" else float(a) for a in args.alphas]
    tasks = [(name, population, seed) for name in args.datasets
             for population in (alphas if name in CLASSIFIERS else args.spreads)
             for seed in range(args.seeds)]
    runs = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for run in pool.map(run_one, tasks):
            print(f"  {run['dataset']} {_population(run['dataset'], run['population'])} "
                  f"seed {run['seed']}: server chose "
                  f"the {'open' if run['check']['open_better'] else 'default'} rule "
                  f"(t = {run['check']['t']:.2f}), {run['seconds']:.0f} s", flush=True)
            runs.append(run)
    rows = summarize(runs)
    args.output.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    (args.output / "personal_rule.json").write_text(json.dumps(
        {"protocol": {"users": USERS, "seeds": args.seeds, "confidence": 0.9,
                      "datasets": args.datasets, "spreads": args.spreads,
                      "alphas": alphas, "classifier_records": CLASSIFIER_RECORDS},
         "summary": rows, "runs": runs, "seconds": seconds}, indent=1))
    (args.output / "personal_rule.md").write_text(markdown(rows, args.seeds))
    plot(rows, args.output / "personal_rule.png", args.seeds)
    print(markdown(rows, args.seeds))
    print(f"wrote {args.output / 'personal_rule.json'}, .md and .png in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
