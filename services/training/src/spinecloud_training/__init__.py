"""SpineCloud training worker: datasets, SegResNet training, MONAI bundles with manifests.

* ``presets``: the ``paper`` and ``demo`` SegResNet presets (``get_preset``).
* ``data``: cases from phantoms or TotalSegmentator/VerSe folders (``phantom_split``,
  ``layout_split``), prepared as inference prepares a volume, cut into augmented patches.
* ``segresnet``: ``train_segresnet(TrainRequest, progress=, should_cancel=)`` and
  ``evaluate_bundle``.
* ``bundle``: ``write_bundle`` / ``load_network`` for the model artefact contract.
* ``cli``: ``spinecloud train``.

The nnU-Net v2 backend is not implemented yet.
"""
