"""Prefect automations of the loop, defined as data (YAML) and applied idempotently by `apply.py`."""
