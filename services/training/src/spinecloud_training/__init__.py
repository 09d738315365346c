"""SpineCloud training worker: datasets, SegResNet and nnU-Net v2 training, the training task.

* ``presets``: the ``paper`` and ``demo`` SegResNet presets (``get_preset``).
* ``data``: cases from phantoms or TotalSegmentator/VerSe folders (``phantom_split``,
  ``layout_split``), prepared as inference prepares a volume, cut into augmented patches; bad
  cases excluded per case with their reason.
* ``segresnet``: ``train_segresnet(TrainRequest, progress=, should_cancel=)`` (resumable
  checkpoints) and ``evaluate_bundle``.
* ``bundle``: ``write_bundle`` / ``load_network`` for the model artefact contract.
* ``nnunet``: raw dataset writer, nnunetv2 planning/training/export helpers, and
  ``nnunet.pipeline.train_nnunet`` (one run to a servable model folder).
* ``evaluation``: validation predictions and references as NIfTI folders for the metrics
  service.
* ``worker_job`` / ``tasks`` / ``child``: the Celery task ``spinecloud.training.train``
  (queue ``training``): train in a child process, publish, evaluate, register.
* ``cli`` / ``models_cli``: ``spinecloud train`` and ``spinecloud models``.
* ``corrections`` / ``finetune``: fine-tuning from clinicians' corrections in Orthanc.

The registry itself (table, rules) lives in ``spinecloud_shared.db.registry`` so that the
gateway and the inference service can read it without importing this package; see
``docs/training.md``.
"""
