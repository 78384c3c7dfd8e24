"""Models served by MLflow alias: signature checks, loaded versions, the MLflow source and the swappable set."""

from serving.services.models.manager import ModelManager, ModelSet, SupportsModelSource
from serving.services.models.mlflow_source import ModelSource
from serving.services.models.served import WARM_UP_PREDICTIONS, ServedModel, example_row, warm_up
from serving.services.models.signature import FeatureSpec, features_from_signature, native_label

__all__ = [
    "WARM_UP_PREDICTIONS",
    "FeatureSpec",
    "ModelManager",
    "ModelSet",
    "ModelSource",
    "ServedModel",
    "SupportsModelSource",
    "example_row",
    "features_from_signature",
    "native_label",
    "warm_up",
]
