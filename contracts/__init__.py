"""The three contracts where the online side (serving) and the batch side (flows) meet, each defined once.

- `api`: the router's HTTP API (request and response shapes).
- `events`: the Prefect events both sides emit and react to.
- `registry`: the MLflow registry aliases, tags and artifact paths.
"""
