"""Where the API's rows come from: the seeded generator (default) or a user's realtor CSV."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from data_api.generator import SINGLE_STATE, World, generate_batch
from data_api.plan import PLAN, TOTAL_ROWS, batch_kind, scaled_rows
from tasador.schema import COLUMNS


class SyntheticSource:
    def __init__(self, seed: int = 42, scale: float = 1.0):
        self.seed, self.scale = seed, scale
        self.world = World(seed)

    def batch(self, kind: int, group: int, day: str) -> pd.DataFrame:
        return generate_batch(self.world, PLAN[kind], self.seed, group, day, self.scale)


class CsvSource:
    """A realtor CSV split into the plan's six kinds by ``plan.batch_kind``; ``scale`` keeps the first
    share of each kind. Rows are served as read (strings), so formatting quirks reach ingestion."""

    def __init__(self, path: str | Path, scale: float = 1.0):
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        missing = [c for c in ("status", "price", "state") if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: the CSV lacks the column(s) {missing} needed to split it into batches")
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = ""
        df = df[list(COLUMNS)].replace({"": None})
        self.scale = scale
        counts = df["state"].value_counts()
        share = PLAN[3].rows / TOTAL_ROWS * len(df)
        single = (counts - share).abs().sort_values(kind="stable").index[0] if len(counts) else SINGLE_STATE
        part2 = PLAN[1].rows / (PLAN[0].rows + PLAN[1].rows)
        keys = np.array([zlib.crc32(str(i).encode()) for i in range(len(df))], dtype=np.uint32)
        kinds = batch_kind(df, single, part2, keys)
        self.parts = {k.index: df[kinds == k.index].reset_index(drop=True) for k in PLAN}

    def batch(self, kind: int, group: int, day: str) -> pd.DataFrame:
        part = self.parts[kind]
        return part.iloc[: scaled_rows(PLAN[kind], self.scale) if self.scale < 1 else len(part)]
