"""The servers the router bench compares, each started as a process of its own by `bench.router`.

- `bare`: a Litestar endpoint returning a constant JSON, on the router's own server settings (the HTTP floor).
- `flask`: the classic design many teams start from: Flask under gunicorn, the MLflow model called through
  `mlflow.pyfunc` per request, one CSV line appended per request (`gunicorn 'bench.router_servers:flask_app()'`).
- the router itself runs as `python -m serving`.
- `ceiling`: the router with its model, and optionally its log write, replaced by nothing (a constant answer; rows
  reported as written without a write): not a servable router but a measuring device, the speed this router's own
  pipeline (HTTP, checks, assignment, micro-batching, answers) allows whatever the model and the store cost
  (`python -m bench.router --ceiling`).
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


CEILINGS = ("no-model", "no-model-no-log")


def hollow_router(what: str) -> None:
    """Take the model (`no-model`), or the model and the log write (`no-model-no-log`), out of this process's router.

    Every request is still parsed, checked against the signature, assigned, batched and answered; its prediction is
    the constant `ceiling`, and with `no-model-no-log` its row is reported as written without touching the store.
    """
    from serving.services.predict import PredictService
    from serving.services.store.inferences import InferenceLog

    if what not in CEILINGS:
        raise SystemExit(f"unknown ceiling {what!r}: one of {', '.join(CEILINGS)}")

    def no_model(self: Any, entries: list[Any], *_: Any) -> list[tuple[Any, str, float]]:
        return [(entry, "ceiling", 0.0) for entry in entries]

    PredictService._predict_arm = no_model  # type: ignore[method-assign,assignment]
    if what == "no-model-no-log":
        InferenceLog.record_many = lambda self, rows: list(rows)  # type: ignore[method-assign]


def main() -> None:
    """`python -m bench.router_servers bare PORT`: serve the bare endpoint with the router's uvicorn settings;
    `python -m bench.router_servers ceiling WHAT`: serve the router (settings from the environment) hollowed out."""
    kind, arg = sys.argv[1], sys.argv[2]
    if kind == "ceiling":
        from serving.__main__ import main as serve

        hollow_router(arg)
        serve()
        return
    if kind != "bare":
        raise SystemExit(f"unknown server {kind!r}")
    import uvicorn

    uvicorn.run(bare_app(), host=HOST, port=int(arg), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
