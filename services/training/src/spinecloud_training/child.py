"""``python -m spinecloud_training.child JOB_ID``: a training job's training run in a process
of its own, started by the training worker (``worker_job.run_training_child``, or
``finetune_job.run_finetune_child`` for a fine-tune job).

nnU-Net and torch's data loader need child processes, which a Celery prefork pool process
(daemonic) may not start. The environment (settings, nnU-Net's variables) is the worker's;
the child dies with the worker process that started it. The outcome, or the error's code and
sentence, is written as ``train_result.json`` in the job's work folder.
"""

from __future__ import annotations

import logging
import sys

from spinecloud_training.finetune_job import is_finetune_job, run_finetune_child
from spinecloud_training.worker_job import run_training_child


def main(argv: list[str]) -> int:
    """Run the job named by the only argument; the exit status."""
    if len(argv) != 1:
        print("usage: python -m spinecloud_training.child JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    if is_finetune_job(argv[0]):
        return run_finetune_child(argv[0])
    return run_training_child(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
