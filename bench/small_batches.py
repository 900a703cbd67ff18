"""Pricing small batches: Treelite's GTIL against XGBoost's own predictor (the baseline), in-process.

A booster of the production model's shape (600 trees of depth 10 over the 21 columns
``ListingFeatures`` makes) is fitted on synthetic rows, then both predictors price batches of 1 to 64
rows on one thread. What ``tasador.compiled`` rests on: where GTIL is faster (``SMALL_ROWS``), and that
both give the same predictions. The last line is JSON: ``xgboost_1_row_ms``, ``gtil_1_row_ms``,
``crossover_rows`` (the smallest batch XGBoost prices faster), ``max_rel_diff``, and per batch size.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import parser, report
from tasador import compiled


def per_call_ms(fn, repeat: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    args = parser(__doc__).parse_args()
    import treelite
    import xgboost as xgb

    rng = np.random.default_rng(0)
    rows = 20_000 if args.quick else 100_000
    X = rng.normal(size=(rows, 21)).astype(np.float32)
    y = 12 + X @ rng.normal(size=21) * 0.1 + np.sin(3 * X[:, 0])  # log prices near 12
    booster = xgb.train({"tree_method": "hist", "max_depth": 10, "eta": 0.08, "nthread": 2},
                        xgb.DMatrix(X, label=y), 100 if args.quick else 600)
    booster.set_param({"nthread": 1})
    trees = treelite.frontend.from_xgboost(booster)
    probe = rng.normal(size=(2_000, 21))
    by_xgboost = booster.inplace_predict(probe).astype(float)
    by_gtil = compiled.gtil_predict(trees, probe).astype(float)
    result = {"trees": booster.num_boosted_rounds(), "max_rel_diff": float(np.max(np.abs(by_gtil - by_xgboost)
                                                                                  / np.abs(by_xgboost)))}
    crossover = None
    for size in (1, 2, 4, 8, 16, 32, 64):
        batch = probe[:size]
        xgb_ms = per_call_ms(lambda b=batch: booster.inplace_predict(b), 100)
        gtil_ms = per_call_ms(lambda b=batch: compiled.gtil_predict(trees, b), 100)
        result[f"xgboost_{size}_rows_ms"], result[f"gtil_{size}_rows_ms"] = xgb_ms, gtil_ms
        print(f"{size:3d} rows: XGBoost {xgb_ms:7.3f} ms, GTIL {gtil_ms:7.3f} ms", flush=True)
        if crossover is None and xgb_ms < gtil_ms:
            crossover = size
    result.update(xgboost_1_row_ms=result["xgboost_1_rows_ms"], gtil_1_row_ms=result["gtil_1_rows_ms"],
                  crossover_rows=crossover, small_rows=compiled.SMALL_ROWS)
    report(result)


if __name__ == "__main__":
    main()
