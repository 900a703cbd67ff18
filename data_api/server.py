"""``tasador data-api``: build the source and serve the app with uvicorn."""

from __future__ import annotations

import uvicorn

from data_api.app import create_app
from data_api.sources import CsvSource, SyntheticSource


def serve(host: str, port: int, scale: float, seed: int, source_csv: str = "") -> None:
    source = CsvSource(source_csv, scale) if source_csv else SyntheticSource(seed, scale)
    uvicorn.run(create_app(source), host=host, port=port, log_level="warning")
