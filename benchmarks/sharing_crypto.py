"""Sealing cost: a 10k-record share package sealed and opened, and the primitives under it.

Measures, in one run, on the same machine:

* a Boston-like package of 10,000 records (the 506 Boston rows resampled; 14
  float columns with DP-style noise on a 2**-10 grid, so values are full
  binary64, plus 2 categorical string columns): ``seal_package`` +
  ``open_package`` (the < 20 ms target), and its parts: msgpack
  ``encode_package`` / ``decode_package`` against ``json`` on the same
  columnar content;
* a generalized variant (3 interval columns and 1 value-set column, as the
  k-anonymizer releases them) for the ext-typed cells;
* raw AES-128-GCM on 1 MiB, HPKE single-shot seal and open of 64 B and 1 MiB.

Times are the median of ``--repeat`` runs after one warm-up.
Writes sharing_crypto.json into ``--output`` (default benchmarks/results).
Usage: python benchmarks/sharing_crypto.py [--records N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
import msgpack
import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dmt_model.datasets import load_boston
from dmt_privacy.package import (
    PrivacyReceipt,
    SharePackage,
    decode_package,
    encode_package,
    open_package,
    seal_package,
)
from dmt_privacy.seal import generate_server_key, open_sealed, seal

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1 << 20


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def boston_like(n: int, seed: int = 0) -> pd.DataFrame:
    boston = load_boston()
    rng = np.random.default_rng(seed)
    rows = boston.iloc[rng.integers(0, len(boston), n)].reset_index(drop=True)
    out = pd.DataFrame(index=rows.index)
    for name in boston.columns:  # 14 float columns, perturbed on a 2**-10 grid
        noise = np.round(rng.laplace(0.0, 0.05 * float(boston[name].std()), n) * 1024) / 1024
        out[name] = rows[name].to_numpy(dtype=float) + noise
    out["CHAS_LABEL"] = np.where(rows["CHAS"] == 1, "river", "inland")
    out["RAD_LABEL"] = [f"radial-{v}" for v in rows["RAD"]]
    return out


def generalized(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name, width in (("AGE", 20.0), ("DIS", 2.0), ("LSTAT", 5.0)):
        low = np.floor(frame[name].to_numpy() / width) * width
        out[name] = pd.arrays.IntervalArray.from_arrays(low, low + width, closed="both")
    groups = {0: frozenset({"radial-1", "radial-2", "radial-3"}),
              1: frozenset({"radial-4", "radial-5", "radial-6"}),
              2: frozenset({"radial-7", "radial-8", "radial-24"})}
    codes = frame["RAD_LABEL"].map(lambda v: hash(v) % 3)
    out["RAD_LABEL"] = pd.Series([groups[c] for c in codes], dtype=object)
    return out


def package_rows(name: str, pkg: SharePackage, repeat: int) -> dict[str, Any]:
    key = generate_server_key()
    public = key.public_key()
    data = encode_package(pkg)
    envelope = seal_package(pkg, public)
    doc = {"columns": {c: v for c, v in pkg.columns.items()}}
    plain = all(type(v) in (float, int, str, bool, type(None))
                for col in pkg.columns.values() for v in col[:50])
    row: dict[str, Any] = {
        "package": name,
        "records": pkg.n_records,
        "fields": len(pkg.columns),
        "msgpack_bytes": len(data),
        "envelope_bytes": len(envelope),
        "encode_ms": median_ms(lambda: encode_package(pkg), repeat),
        # packages of 10,000 records pass 1 MiB, the limits' default: a trusted source here
        "decode_ms": median_ms(lambda: decode_package(data, max_bytes=len(data)), repeat),
        "seal_package_ms": median_ms(lambda: seal_package(pkg, public), repeat),
        "open_package_ms": median_ms(lambda: open_package(envelope, key,
                                                          max_bytes=len(data)), repeat),
        "seal_plus_open_ms": median_ms(lambda: open_package(seal_package(pkg, public), key,
                                                            max_bytes=len(data)), repeat),
        "to_frame_ms": median_ms(lambda: pkg.to_frame(), repeat),
    }
    if plain:  # json cannot hold intervals or sets without a custom encoding
        text = json.dumps(doc).encode()
        row.update(
            json_bytes=len(text),
            json_encode_ms=median_ms(lambda: json.dumps(doc).encode(), repeat),
            json_decode_ms=median_ms(lambda: json.loads(text), repeat),
        )
    return row


def primitive_rows(repeat: int) -> list[dict[str, Any]]:
    key = generate_server_key()
    public = key.public_key()
    aes = AESGCM(AESGCM.generate_key(bit_length=128))
    nonce = os.urandom(12)
    mib = os.urandom(MIB)
    rows = []
    ms = median_ms(lambda: aes.encrypt(nonce, mib, None), repeat * 4)
    rows.append({"operation": "AES-128-GCM encrypt 1 MiB", "ms": ms,
                 "GB_per_s": MIB / (ms / 1e3) / 1e9})
    for size, label in ((64, "64 B"), (MIB, "1 MiB")):
        plaintext = os.urandom(size)
        envelope = seal(plaintext, public)
        ms = median_ms(lambda: seal(plaintext, public), repeat * 4)  # noqa: B023
        rows.append({"operation": f"HPKE seal {label}", "ms": ms,
                     "GB_per_s": size / (ms / 1e3) / 1e9})
        ms = median_ms(lambda: open_sealed(envelope, key), repeat * 4)  # noqa: B023
        rows.append({"operation": f"HPKE open {label}", "ms": ms,
                     "GB_per_s": size / (ms / 1e3) / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()

    frame = boston_like(args.records)
    receipt = PrivacyReceipt(k=None, modifications=("dp.discrete_laplace",))
    packages = [
        ("boston-like 14 float + 2 categorical",
         SharePackage.create("boston-like", frame, receipt)),
        ("generalized: 3 interval + 1 value-set columns",
         SharePackage.create("boston-like", generalized(frame), receipt)),
    ]
    pkg_rows = [package_rows(name, pkg, args.repeat) for name, pkg in packages]
    prim_rows = primitive_rows(args.repeat)
    result = {
        "benchmark": "sharing_crypto",
        "records": args.records,
        "repeat": args.repeat,
        "target_seal_plus_open_ms": 20.0,
        "packages": pkg_rows,
        "primitives": prim_rows,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "cryptography": cryptography.__version__,
            "msgpack": ".".join(map(str, msgpack.version)),
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / "sharing_crypto.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'package':<48}{'records':>8}{'msgpack':>10}{'encode':>9}{'decode':>9}"
          f"{'seal+open':>11}{'json':>10}{'json enc':>10}{'json dec':>10}")
    for r in pkg_rows:
        json_cols = (f"{r['json_bytes'] / 1e6:>8.2f}MB{r['json_encode_ms']:>8.2f}ms"
                     f"{r['json_decode_ms']:>8.2f}ms" if "json_bytes" in r else f"{'-':>30}")
        print(f"{r['package']:<48}{r['records']:>8}{r['msgpack_bytes'] / 1e6:>8.2f}MB"
              f"{r['encode_ms']:>7.2f}ms{r['decode_ms']:>7.2f}ms{r['seal_plus_open_ms']:>9.2f}ms"
              f"{json_cols}")
    print()
    print(f"{'operation':<30}{'ms':>10}{'GB/s':>10}")
    for r in prim_rows:
        rate = f"{r['GB_per_s']:>10.2f}" if "1 MiB" in r["operation"] else f"{'-':>10}"
        print(f"{r['operation']:<30}{r['ms']:>10.4f}{rate}")
    verdict = "meets" if pkg_rows[0]["seal_plus_open_ms"] < 20.0 else "MISSES"
    print(f"\nseal + open of {args.records} records: {pkg_rows[0]['seal_plus_open_ms']:.2f} ms "
          f"({verdict} the 20 ms target). Wrote {out}")


if __name__ == "__main__":
    main()
