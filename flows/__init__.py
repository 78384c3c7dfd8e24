"""The batch side: one Prefect flow per stage of the loop (bootstrap, drift, retrain, A/B evaluation, controls).

The logic the flows call lives in `flows/lib`, as plain functions a test can call without Prefect.
"""
