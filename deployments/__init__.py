"""Running the loop: the one-machine stack (Prefect, MLflow, router, worker), the traffic simulator and the demo."""
