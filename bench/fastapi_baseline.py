"""The baseline of ``bench.serve``: what a user without Ray Serve would write. A plain FastAPI app
under uvicorn (one worker) that loads the same MLflow model version and validates with the same
schema, then prices each request on its own (no batching across requests).

Run: ``TASADOR_... MODEL_VERSION=3 uvicorn bench.fastapi_baseline:app --port P``.
"""

import os

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serve_app.app import BadRequest, parse_listings
from serve_app.schemas import listings_adapter, to_columns
from tasador.promotion import load_model
from tasador.settings import Settings

settings = Settings.load()
version = os.environ["MODEL_VERSION"]
model = load_model(settings, version)
adapter = listings_adapter(settings.serve_max_listings)
app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    try:
        listings = parse_listings(await request.body(), settings.serve_max_listings, adapter)
    except BadRequest as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    prices = model.predict(pd.DataFrame(to_columns(listings)))
    return JSONResponse({"model_name": settings.model_name, "model_version": version,
                         "prices": [round(float(p), 2) for p in prices]})


@app.get("/health")
async def health():
    return {"status": "ok", "model_version": version}
