"""The six-batch plan observed on the real course API, and the rule that puts a listing in a batch.

Both the synthetic generator and a user's realtor CSV are split by the same rules (``batch_kind``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BatchKind:
    index: int
    rows: int
    description: str


PLAN: tuple[BatchKind, ...] = (
    BatchKind(0, 73_784, "for_sale <= $300k (part 1)"),
    BatchKind(1, 94_551, "for_sale <= $300k (part 2)"),
    BatchKind(2, 230_366, "sold <= $300k"),
    BatchKind(3, 4_055, "mixed, one state only"),
    BatchKind(4, 320_696, "mixed $300k-$500k"),
    BatchKind(5, 361_457, "mixed $500k-$515M"),
)
TOTAL_ROWS = sum(k.rows for k in PLAN)  # 1,084,909
SOLD_KIND = 2
LOW, MID, HIGH = 300_000.0, 500_000.0, 515_000_000.0
EXHAUSTED_DETAIL = "Ya se recolectó toda la información mínima necesaria"


def scaled_rows(kind: BatchKind, scale: float) -> int:
    return kind.rows if scale >= 1.0 else max(1, round(kind.rows * scale))


def batch_order(group: int, day: str) -> list[int]:
    """The order in which (group, day) is served the six kinds: a permutation seeded by both,
    with the 230,366-row sold batch first (the course API's default group and day start with it,
    and every model lineage then starts from a batch large enough to train on)."""
    rng = np.random.default_rng([int(group) & 0xFFFFFFFF, zlib.crc32(day.encode())])
    rest = [k.index for k in PLAN if k.index != SOLD_KIND]
    return [SOLD_KIND] + [rest[i] for i in rng.permutation(len(rest))]


def batch_kind(df: pd.DataFrame, single_state: str, part2_share: float, row_key: np.ndarray) -> np.ndarray:
    """For each row of ``df`` (columns status, price, state), the kind index it belongs to.

    Rows of ``single_state`` form the one-state batch; the others go by status and price. Rows that
    fit no price band (ready_to_build or unpriced at <= $300k, or above $515M) go to the mixed
    high band so that nothing is lost. ``row_key`` (uint32 per row) splits for_sale <= $300k
    between parts 1 and 2 deterministically.
    """
    price = pd.to_numeric(df["price"], errors="coerce").to_numpy(dtype=float)
    status = df["status"].astype(str).to_numpy()
    low = price <= LOW
    kind = np.full(len(df), 5, dtype=np.int8)
    kind[(price > LOW) & (price <= MID)] = 4
    for_sale_low = low & (status == "for_sale")
    part2 = (row_key % 10_000) < part2_share * 10_000
    kind[for_sale_low & ~part2] = 0
    kind[for_sale_low & part2] = 1
    kind[low & (status == "sold")] = 2
    kind[df["state"].astype(str).to_numpy() == single_state] = 3
    return kind
