"""The data API over HTTP (FastAPI), with the course API's exact contract (DESIGN 3.2).

Large batches are streamed as JSON in chunks, so the server never holds the whole JSON text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pandas as pd
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

from data_api.plan import EXHAUSTED_DETAIL, PLAN, batch_order

CHUNK_ROWS = 20_000


def create_app(source) -> FastAPI:
    app = FastAPI(title="Tasador data API", description="Batches of US real-estate listings")
    served: dict[tuple[int, str], int] = {}
    lock = threading.Lock()

    @app.get("/")
    def banner():
        return {"service": "tasador data API", "batches": len(PLAN),
                "usage": "GET /data?group_number=N&day=D"}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/data")
    def data(group_number: int = Query(..., ge=0, le=1_000_000), day: str = Query(..., min_length=1, max_length=32)):
        with lock:
            count = served.get((group_number, day), 0)
            if count >= len(PLAN):
                raise HTTPException(status_code=400, detail=EXHAUSTED_DETAIL)
            served[(group_number, day)] = count + 1
        kind = batch_order(group_number, day)[count]
        df = source.batch(kind, group_number, day)
        head = {"group_number": group_number, "day": day, "batch_number": count + 1}
        return StreamingResponse(_stream(head, df), media_type="application/json")

    @app.get("/restart_data_generation")
    def restart(group_number: int = Query(..., ge=0, le=1_000_000), day: str = Query(..., min_length=1, max_length=32)):
        with lock:
            served.pop((group_number, day), None)
        return {"ok": True, "group_number": group_number, "day": day}

    return app


def _stream(head: dict, df: pd.DataFrame) -> Iterator[bytes]:
    yield json.dumps(head, ensure_ascii=False)[:-1].encode() + b', "data": ['
    for start in range(0, len(df), CHUNK_ROWS):
        chunk = df.iloc[start:start + CHUNK_ROWS].to_json(orient="records", force_ascii=False, double_precision=15)
        yield (b"," if start else b"") + chunk[1:-1].encode()
    yield b"]}"
