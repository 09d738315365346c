"""Names of every queued task and the queue each goes to.

The gateway enqueues by name without importing a service (services are separate images), so
the names live here: a service registers its task under the constant, the gateway sends to the
same constant, and ``grep`` finds both ends. Names are ``spinecloud.<queue>.<action>``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHECK_CORRECTIONS",
    "EVALUATE",
    "INFERENCE_QUEUE",
    "METRICS_QUEUE",
    "QUEUES",
    "REGISTER_DATASET",
    "SEGMENT_SERIES",
    "TRAIN",
    "TRAINING_QUEUE",
    "queue_for",
]

INFERENCE_QUEUE: Final = "inference"
TRAINING_QUEUE: Final = "training"
METRICS_QUEUE: Final = "metrics"
#: Every queue a SpineCloud worker may consume (``celery worker -Q ...``).
QUEUES: Final[tuple[str, ...]] = (INFERENCE_QUEUE, TRAINING_QUEUE, METRICS_QUEUE)

#: Segment one CT series and store the DICOM-SEG (inference worker, GPU).
SEGMENT_SERIES: Final = "spinecloud.inference.segment_series"
#: Train a model on a registered dataset (training worker, GPU).
TRAIN: Final = "spinecloud.training.train"
#: Scan a registered dataset: validate every case, store its summary and splits (training).
REGISTER_DATASET: Final = "spinecloud.training.register_dataset"
#: Count clinicians' unused corrections of production models; start a fine-tune at the
#: threshold (training worker; the gateway sends it when a study holds a SEG not written by
#: SpineCloud).
CHECK_CORRECTIONS: Final = "spinecloud.training.check_corrections"
#: Evaluate predictions against references and write the benchmark tables (metrics worker).
EVALUATE: Final = "spinecloud.metrics.evaluate"


def queue_for(task_name: str) -> str | None:
    """The queue of a ``spinecloud.<queue>.<action>`` task name, or None if it has none."""
    parts = task_name.split(".")
    if len(parts) >= 3 and parts[0] == "spinecloud" and parts[1] in QUEUES:
        return parts[1]
    return None
