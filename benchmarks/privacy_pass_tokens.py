"""What the per-device package limit costs: Privacy Pass issuance, redemption, ingestion.

Measured in process, on the path `dmt serve` runs (Ingestor.ingest_one, SQLite):

- issuance per token: the device blinds (``request_tokens``), the issuer checks
  the batch, reserves the device's allowance and signs (``TokenIssuer.issue``:
  one 2048-bit RSA exponentiation per token, on Python integers), the device
  unblinds and verifies (``PendingTokens.finalize``); batches of 10;
- redemption per package: ``verify_token`` (RSASSA-PSS verify) and
  ``IssuerKeys.redeem`` (key lookup, period check, verify);
- ingestion throughput of the same 3-record packages with and without a
  token each (the token adds the check, the spent-token row and the
  release rule's join), alternating runs.

Writes privacy_pass_tokens.json into ``--output`` (default benchmarks/results).
Usage: python benchmarks/privacy_pass_tokens.py [--packages 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_load import POLICY, RESULTS, SCHEMA, make_envelopes

from dmt_model.server import ServerPolicy
from dmt_model.server.ingest import Ingestor
from dmt_model.server.issuer import TokenIssuer
from dmt_privacy.privacy_pass import request_tokens, verify_token
from dmt_privacy.seal import generate_server_key


def _ms(seconds: float, n: int) -> float:
    return round(1000 * seconds / n, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    key = generate_server_key()
    token_policy = ServerPolicy(SCHEMA, min_k=3, tokens_per_period=10**9)
    results: dict[str, object] = {"machine": platform.platform(), "python": sys.version.split()[0],
                                  "packages": args.packages}
    with tempfile.TemporaryDirectory() as tmp:
        ingestor = Ingestor(f"sqlite:///{tmp}/issuer.db", key, token_policy)
        assert ingestor.token_keys is not None
        issuer = TokenIssuer(ingestor.token_keys, lambda e: e.decode(), 10**9)
        t0 = time.perf_counter()
        _, public = issuer.current_key()
        results["period_key_generation_s"] = round(time.perf_counter() - t0, 3)
        blind_t = sign_t = final_t = 0.0
        tokens = []
        batches = max(1, (args.packages * args.repeats) // 10)
        for b in range(batches):
            t0 = time.perf_counter()
            pending = request_tokens(public, 10)
            t1 = time.perf_counter()
            response = issuer.issue(f"device-{b}".encode(), pending.body)
            t2 = time.perf_counter()
            tokens += pending.finalize(response)
            t3 = time.perf_counter()
            blind_t, sign_t, final_t = blind_t + t1 - t0, sign_t + t2 - t1, final_t + t3 - t2
        n_tok = 10 * batches
        results["issuance_ms_per_token"] = {
            "device_blind": _ms(blind_t, n_tok), "issuer_sign": _ms(sign_t, n_tok),
            "device_finalize": _ms(final_t, n_tok),
            "total": _ms(blind_t + sign_t + final_t, n_tok)}
        t0 = time.perf_counter()
        for token in tokens[:500]:
            verify_token(token, public)
        verify_ms = _ms(time.perf_counter() - t0, min(500, len(tokens)))
        t0 = time.perf_counter()
        for token in tokens[:500]:
            ingestor.token_keys.redeem(token.to_bytes())
        redeem_ms = _ms(time.perf_counter() - t0, min(500, len(tokens)))
        results["redemption_ms_per_package"] = {"verify_token": verify_ms, "redeem": redeem_ms}
        runs: dict[str, list[float]] = {"without_tokens": [], "with_tokens": []}
        for r in range(args.repeats):
            for mode in ("without_tokens", "with_tokens"):
                chunk = tokens[r * args.packages:(r + 1) * args.packages]
                envelopes = make_envelopes(args.packages, key.public_key(), seed=r,
                                           tokens=chunk if mode == "with_tokens" else None)
                policy = token_policy if mode == "with_tokens" else POLICY
                target = Ingestor(f"sqlite:///{tmp}/{mode}-{r}.db", key, policy)
                target.data_key()
                if target.token_keys is not None:  # the issuer's keys live in its database
                    target.token_keys = ingestor.token_keys
                t0 = time.perf_counter()
                outcomes = [target.ingest_one(e) for _, e in envelopes]
                elapsed = time.perf_counter() - t0
                assert all(o.status == "accepted" for o in outcomes), outcomes[0]
                runs[mode].append(args.packages / elapsed)
        results["ingestion_packages_per_s"] = {
            mode: {"median": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]}
            for mode, v in runs.items()}
        without = statistics.median(runs["without_tokens"])
        with_ = statistics.median(runs["with_tokens"])
        results["ingestion_ms_per_package"] = {"without_tokens": round(1000 / without, 3),
                                               "with_tokens": round(1000 / with_, 3)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "privacy_pass_tokens.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
