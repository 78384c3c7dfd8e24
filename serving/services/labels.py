"""Labels that arrive after the prediction: checked against the model's classes, written once, retries harmless."""

from __future__ import annotations

from contracts.api import FeedbackRequest, FeedbackResponse
from serving.errors import UnknownRequest
from serving.metrics import RouterMetrics
from serving.services import views
from serving.services.models import ModelManager
from serving.services.models.signature import check_label
from serving.services.store import Store


class FeedbackService:
    """Answers `/feedback`. Blocking: call from a worker thread."""

    def __init__(self, *, store: Store, models: ModelManager, metrics: RouterMetrics) -> None:
        """Wire the service.

        Args:
            store: The inference log.
            models: Knows the classes of the versions this process loaded.
            metrics: Where label counts go.
        """
        self.store = store
        self.models = models
        self.metrics = metrics

    def submit(self, data: FeedbackRequest) -> FeedbackResponse:
        """Attach the true label to a logged prediction; the same label again is a no-op (200).

        Raises:
            UnknownRequest: No prediction has this id (404).
            InvalidLabel: The label is not a class of the model that predicted (422).
            AlreadyLabelled: The prediction has another label (409).
        """
        logged = self.store.log.get(data.request_id)
        if logged is None:
            raise UnknownRequest(f"unknown request_id {data.request_id!r}: no prediction with this id was logged")
        label = check_label(
            data.label, self.models.classes(logged.model_version), what=f"{logged.model_name} v{logged.model_version}"
        )
        row, labelled_now = self.store.log.set_label(data.request_id, label)
        if labelled_now:
            self.metrics.labels.labels(row.arm, row.model_version, str(row.label == row.prediction).lower()).inc()
        return views.feedback_response(row)
