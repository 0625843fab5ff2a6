"""Start-up time of the dmt command and the client imports, each in a fresh interpreter.

Measures wall time (best and median of --repeat runs, after one warm-up run
that fills the OS file cache) of:

* ``dmt --help`` (building the parser of every command);
* ``dmt export f.npz -o m.mlmodel --updatable`` on a small model trained once
  beforehand (not timed);
* ``import dmt_privacy``, ``.sharing``, ``.package``, ``.anonymity`` and ``.dp``;

and, for each, which heavy modules the process loaded (torch, scikit-learn,
scipy, pandas, coremltools, sqlalchemy, fastapi). ``--tree DIR`` measures
another checkout (e.g. ``git archive COMMIT | tar -x -C DIR``) with the same
interpreter, to compare before and after a change.

Usage: python benchmarks/startup.py [--repeat 7] [--tree DIR] [--output DIR] [--name FILE]
Writes startup.json (or --name, e.g. startup_before.json for another --tree) into
--output (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("torch", "sklearn", "scipy", "pandas", "coremltools", "sqlalchemy", "fastapi")
IMPORTS = ("dmt_privacy", "dmt_privacy.sharing", "dmt_privacy.package", "dmt_privacy.anonymity",
           "dmt_privacy.dp")
#: Runs ``dmt_model.cli.main`` with the given arguments, then reports the heavy modules.
_CLI = ("import sys, json\nfrom dmt_model.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    code = exc.code or 0\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
        "sys.exit(code)\n")


def _import_code(module: str) -> str:
    return (f"import sys, json\nimport {module}\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), "
            "file=sys.stderr)\n")


def _run(argv: list[str], tree: Path, cwd: Path) -> tuple[float, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[3:] or argv} failed ({done.returncode}):\n{done.stderr}")
    return elapsed, json.loads(done.stderr.strip().splitlines()[-1])


def _measure(argv: list[str], tree: Path, cwd: Path, repeat: int,
             before_each: list[Path] | None = None) -> dict[str, object]:
    times: list[float] = []
    modules: list[str] = []
    for i in range(repeat + 1):  # the first run warms the file cache and is not counted
        for path in before_each or ():
            path.unlink(missing_ok=True)
        elapsed, modules = _run(argv, tree, cwd)
        if i:
            times.append(elapsed)
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
            "runs": repeat, "heavy_modules": modules}


def _model_file(folder: Path, tree: Path) -> Path:
    """A small foundation model file, trained with the measured checkout (not timed)."""
    path = folder / "f.npz"
    code = ("from dmt_model.datasets import BOSTON_SCHEMA, load_boston\n"
            "from dmt_model.foundation import TrainingConfig, train_foundation\n"
            "train_foundation(load_boston(), BOSTON_SCHEMA, TrainingConfig(epochs=2))"
            f".save({str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], cwd=folder, check=True,
                   env={**os.environ, "PYTHONPATH": str(tree)})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs each (default 7)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--name", default="startup.json",
                        help="file name in OUTPUT (default: %(default)s)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    python = sys.executable
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _model_file(folder, tree)
        results["dmt --help"] = _measure([python, "-c", _CLI, "--help"], tree, folder,
                                         args.repeat)
        exported = folder / "m.mlmodel"
        results["dmt export"] = _measure(
            [python, "-c", _CLI, "export", str(model), "-o", str(exported), "--updatable"],
            tree, folder, args.repeat, before_each=[exported])
        for module in IMPORTS:
            results[f"import {module}"] = _measure([python, "-c", _import_code(module)], tree,
                                                   folder, args.repeat)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    report = {
        "benchmark": "startup",
        "tree": str(tree),
        "commit": commit or None,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "note": "wall time of a fresh interpreter; best and median of the timed runs after "
                "one warm-up run",
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / args.name).write_text(json.dumps(report, indent=2) + "\n")
    for name, row in results.items():
        assert isinstance(row, dict)
        print(f"{name:<32} best {row['best_s']:6.3f} s  median {row['median_s']:6.3f} s  "
              f"loads {', '.join(row['heavy_modules']) or '-'}")
    print(f"wrote {args.output / args.name}")


if __name__ == "__main__":
    main()
