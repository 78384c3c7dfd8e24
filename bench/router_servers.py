"""The servers the router bench compares, each started as a process of its own by `bench.router`.

- `bare`: a Litestar endpoint returning a constant JSON, on the router's own server settings (the HTTP floor).
- `flask`: the classic design many teams start from: Flask under gunicorn, the MLflow model called through
  `mlflow.pyfunc` per request, one CSV line appended per request (`gunicorn 'bench.router_servers:flask_app()'`).
- the router itself runs as `python -m serving`.
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
import uuid
from typing import Any

import msgspec

from contracts.api import ROUTE_PREDICT

HOST = "127.0.0.1"


class Body(msgspec.Struct, kw_only=True):
    """What the bench sends: the router's /predict body."""

    user_id: str | int
    features: dict[str, float]


def bare_app() -> Any:
    """A Litestar app with one POST /predict that decodes the body and returns a constant JSON."""
    from litestar import Litestar, post

    answer = {"request_id": "0", "prediction": "setosa", "model_name": "bare", "model_version": "1"}

    @post(ROUTE_PREDICT, status_code=200, sync_to_thread=False)
    def predict(data: Body) -> dict[str, str]:
        return answer

    return Litestar([predict])


def flask_app() -> Any:
    """The classic design: `mlflow.pyfunc` model loaded at start, called per request, a CSV line per request.

    Environment: `BENCH_MODEL_URI` (a `models:/...` URI), `MLFLOW_TRACKING_URI`, `BENCH_CSV` (the log file).
    """
    import mlflow.pyfunc
    import pandas as pd
    from flask import Flask, jsonify, request

    model = mlflow.pyfunc.load_model(os.environ["BENCH_MODEL_URI"])
    path = os.environ["BENCH_CSV"]
    lock = threading.Lock()
    app = Flask("classic")

    @app.post(ROUTE_PREDICT)
    def predict() -> Any:
        body = request.get_json()
        frame = pd.DataFrame([body["features"]])
        prediction = str(model.predict(frame)[0])
        request_id = uuid.uuid4().hex
        with lock, open(path, "a", newline="") as f:
            csv.writer(f).writerow([request_id, time.time(), body["user_id"], prediction, *body["features"].values()])
        return jsonify({"request_id": request_id, "prediction": prediction})

    return app


def main() -> None:
    """`python -m bench.router_servers bare PORT`: serve the bare endpoint with the router's uvicorn settings."""
    import uvicorn

    kind, port = sys.argv[1], int(sys.argv[2])
    if kind != "bare":
        raise SystemExit(f"unknown server {kind!r}")
    uvicorn.run(bare_app(), host=HOST, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
