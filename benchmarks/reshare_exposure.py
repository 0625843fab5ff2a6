"""What a server learns when a device shares the same records again after a refusal.

A device holds notes (WordNet's own example sentences, offline) and an income, and
shares them with synonyms (``SynonymReplacer(rate)``) and a local-DP income (ε = 1 a
record, user-level). The server refuses the package and opens it all the same, as it must
to check it; the device abandons it and shares again, up to ``--attempts`` times. Per
note: how many of its original words the server saw in one package, and in one package or
another, and the ε the device's ledger was charged.

Arms, in the same run, on the same notes:

* *drawn once*: this checkout's ``share()``, which sends a record shared again with what
  it released before (``LocalStore.draws``, since 7 December);
* *the SDK at BEFORE*: the same script's arm run by the SDK of commit ``--before``
  (default ce82fa7, the last before ``LocalStore.draws``), unpacked with ``git archive``
  into a temporary folder and imported in a process of its own (which fails if any
  ``dmt_privacy`` module comes from elsewhere): every attempt draws afresh, and is
  charged.

    NLTK_DATA=nltk_data python benchmarks/reshare_exposure.py [--notes 200] [--attempts 4]
        [--before ce82fa7]

Writes ``benchmarks/results/reshare_exposure.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy import Field, Schema
from dmt_privacy.modify import SynonymReplacer, load_wordnet
from dmt_privacy.package import open_package
from dmt_privacy.seal import generate_server_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCHEMA = Schema((Field("note", "text"),
                 Field("income", "numeric", bounds=(0, 1000), grid=1.0)))


def notes(n: int) -> list[str]:
    """The first ``n`` WordNet example sentences of 8 words or more, in WordNet's order."""
    wordnet = load_wordnet()
    found: list[str] = []
    for synset in wordnet.all_synsets():
        for example in synset.examples():
            if len(example.split()) >= 8 and example not in found:
                found.append(example)
                if len(found) == n:
                    return found
    return found


def _seen(original: list[str], view: list[str]) -> set[int]:
    """Positions of ``original`` whose word the view shows: by position when no word was
    split or joined, else each word the view holds."""
    if len(view) == len(original):
        return {i for i, word in enumerate(original) if view[i] == word}
    held = set(view)
    return {i for i, word in enumerate(original) if word in held}


def run_arm(texts: list[str], attempts: int, rate: float) -> dict[str, Any]:
    """One arm, by the SDK this process imported."""
    modifier = SynonymReplacer(rate)
    key = generate_server_key()
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "device.db", schema=SCHEMA, user_id="u",
                           epsilon_budget=1e6, key=LocalStore.generate_key())
        rng = np.random.default_rng(0)
        store.add_records(pd.DataFrame({"note": texts,
                                        "income": rng.integers(0, 1000, len(texts))},
                                       index=[f"n{i}" for i in range(len(texts))]))
        policy = SharingPolicy(fields=("note", "income"), epsilon={"income": 1.0},
                               modifiers={"note": modifier}, privacy_unit="user")
        views: list[dict[str, str]] = []
        start = time.perf_counter()
        for _ in range(attempts):
            result = share(store, policy, key.public_key())
            package = open_package(result.envelope, key)  # the server opens it to check it
            views.append(dict(zip(result.entry.record_ids, package.columns["note"],
                                  strict=True)))
            store.abandon(result.package_id)  # and refuses it
        seconds = time.perf_counter() - start
        charged = float(store.ledger.spent.epsilon) / len(texts)
        store.close()
    one, union = [], []
    for i, text in enumerate(texts):
        original = text.split()
        seen = [_seen(original, view[f"n{i}"].split()) for view in views]
        one.append(len(seen[0]) / len(original))
        union.append(len(set().union(*seen)) / len(original))
    return {"words_seen_in_one_package": float(np.mean(one)),
            "words_seen_in_any_package": float(np.mean(union)),
            "notes_with_more_seen_than_in_one": float(np.mean(np.array(union) > np.array(one))),
            "epsilon_charged_per_record": charged, "seconds": seconds}


def before_arm(commit: str, args: argparse.Namespace) -> dict[str, Any]:
    """The arm run by the SDK of ``commit``, unpacked from this checkout's git history into a
    temporary folder (``git archive``: nothing to clean up in the repository if the run is
    killed)."""
    root = HERE.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", commit, "dmt_privacy"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        if "NLTK_DATA" in env:  # as this process reads it, from wherever it runs
            env["NLTK_DATA"] = str(Path(env["NLTK_DATA"]).resolve())
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--arm-only", "--notes",
             str(args.notes), "--attempts", str(args.attempts), "--rate", str(args.rate)],
            env=env, capture_output=True, text=True, cwd=tmp)
        if out.returncode != 0:
            raise RuntimeError(f"the arm of {commit} failed:\n{out.stderr}")
        row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        if not all(Path(m).is_relative_to(tree) for m in row.pop("modules")):
            raise RuntimeError(f"the arm of {commit} imported dmt_privacy from elsewhere too")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.6)
    parser.add_argument("--before", default="ce82fa7")
    parser.add_argument("--arm-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    texts = notes(args.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = run_arm(texts, args.attempts, args.rate)
    if args.arm_only:
        modules = [m.__file__ for name, m in sys.modules.items()
                   if name.split(".")[0] == "dmt_privacy" and getattr(m, "__file__", None)]
        print(json.dumps({**row, "modules": modules}))
        return
    from run_environment import environment  # a sibling, on the path above

    rows = {"drawn once": row, f"the SDK at {args.before}": before_arm(args.before, args)}
    out = {"environment": environment(), "notes": len(texts), "attempts": args.attempts,
           "rate": args.rate, "epsilon_per_record": 1.0, "before": args.before, "arms": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "reshare_exposure.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"**{len(texts)} notes shared {args.attempts} times, each refused and abandoned** "
             f"(`SynonymReplacer({args.rate:g})`, income at ε = 1 a record)", "",
             "| arm | original words the server saw in one package | in one package or "
             "another | notes it saw more of | ε charged a record |",
             "|---|---|---|---|---|"]
    for arm, row in rows.items():
        lines.append(f"| {arm} | {row['words_seen_in_one_package']:.1%} | "
                     f"{row['words_seen_in_any_package']:.1%} | "
                     f"{row['notes_with_more_seen_than_in_one']:.0%} | "
                     f"{row['epsilon_charged_per_record']:g} |")
    text = "\n".join(lines) + "\n"
    (args.output / "reshare_exposure.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
