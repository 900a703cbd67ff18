"""Small requests priced by Treelite's tree interpreter (GTIL), large ones by XGBoost.

XGBoost's CPU predictor works in blocks of 64 rows: one listing costs what 64 cost (3.3-4.2 ms for 600
trees of depth 10 on this machine, one thread), while Treelite's GTIL walks the same trees in 0.26 ms
for one row and about 0.33 ms per row after that. So up to ``SMALL_ROWS`` rows go to GTIL, more to
XGBoost (the crossover measured at 8-16 rows; ``docs/benchmarks.md``). SHAP stays with XGBoost.

Not tl2cgen (Treelite's C code generator): gcc took over 6 minutes for such a model on 2 cores, a cost
every new version would pay. Not ONNX Runtime: it needs a converter package besides.

A version is priced by GTIL only after the check: its predictions equal XGBoost's within
``MAX_REL_DIFF`` (relative) on held-out rows, checked at registration (the rows travel in the model, ``check_rows_``)
and again at every load. A version without check rows (registered before this) or that fails the
check is priced by XGBoost alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SMALL_ROWS = 8
MAX_REL_DIFF = 1e-5
CHECK_ROWS = 1000  # held-out rows stored in the model for the check at load


def compile_trees(model) -> object | None:
    """Treelite's form of the model's XGBoost booster; None for the other families."""
    booster = getattr(model.regressor, "booster", None)
    if booster is None:
        return None
    import treelite

    return treelite.frontend.from_xgboost(booster)


def gtil_predict(trees, X: np.ndarray) -> np.ndarray:
    import treelite

    return treelite.gtil.predict(trees, np.asarray(X, dtype=np.float32), nthread=1).ravel()


def max_relative_difference(model, trees, rows: pd.DataFrame) -> float:
    """The largest relative difference between GTIL's and XGBoost's predictions (the booster's output,
    log price) for ``rows``. Both sum 600 float32 leaves in their own order: about 2e-6 apart relative
    (one or two float32 steps of a log price near 12), which is up to ~2e-5 relative on the price in
    dollars (about $5 on $250,000), below what float32 itself resolves of a log price."""
    X = model.features.transform(rows)
    by_xgboost = np.asarray(model.regressor.booster.inplace_predict(X), dtype=float)
    by_gtil = np.asarray(gtil_predict(trees, X), dtype=float)
    return float(np.max(np.abs(by_gtil - by_xgboost) / np.abs(by_xgboost))) if len(X) else float("inf")


def check_at_registration(model, held_out: pd.DataFrame) -> dict:
    """Keep ``CHECK_ROWS`` held-out rows in the model and measure GTIL against XGBoost on them: the
    figures become the version's tags."""
    trees = compile_trees(model)
    if trees is None:
        return {}
    model.check_rows_ = held_out.head(CHECK_ROWS).reset_index(drop=True)
    diff = max_relative_difference(model, trees, model.check_rows_)
    return {"compiled_max_rel_diff": f"{diff:.3g}", "compiled_check_rows": str(len(model.check_rows_)),
            "compiled": str(diff <= MAX_REL_DIFF).lower()}


def attach_at_load(model) -> dict:
    """Price small requests of a loaded version with GTIL if it passes the check on its own held-out
    rows; what happened, for the version's info."""
    rows = getattr(model, "check_rows_", None)
    if getattr(model.regressor, "booster", None) is None:
        return {"compiled": False, "why": f"{model.family}: not a tree booster"}
    if rows is None or len(rows) == 0:
        return {"compiled": False, "why": "registered without held-out check rows"}
    trees = compile_trees(model)
    diff = max_relative_difference(model, trees, rows)
    if not diff <= MAX_REL_DIFF:
        return {"compiled": False, "why": f"GTIL differs from XGBoost by {diff:.3g} (relative) on "
                                          f"{len(rows)} held-out rows", "max_rel_diff": diff}
    model.regressor.small_batch_trees = trees
    return {"compiled": True, "max_rel_diff": diff, "check_rows": len(rows), "small_rows": SMALL_ROWS}
