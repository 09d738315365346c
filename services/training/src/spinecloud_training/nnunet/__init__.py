"""nnU-Net v2 training through nnunetv2's own API.

* ``raw_dataset``: SpineCloud cases written as an nnU-Net raw dataset (``write_raw_dataset``).
* ``train``: ``plan_and_preprocess``, ``train`` (fold 0-4 or "all", resume), ``model_manifest``,
  ``write_model_manifest`` and ``export_zip`` (nnU-Net's export zip plus ``spinecloud.json``).

nnunetv2 is imported only inside the functions that need it.
"""
