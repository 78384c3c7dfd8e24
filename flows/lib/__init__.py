"""Plain functions behind the batch-side flows: data, training, drift and the model registry.

Import the submodules directly (`from flows.lib import drift`): each pulls in its own heavy dependency
(PyCaret, Evidently, MLflow) only when it is imported.
"""
