"""SpineCloud inference: CT series in, labelled spine DICOM-SEG out.

``backends`` loads model artefacts (MONAI bundles; nnU-Net v2 plugs into the same registry)
and keeps them in memory; ``pipeline`` prepares a volume, runs the model and brings the label
map back onto the source grid; ``postprocess`` and ``plausibility`` clean it and report
anatomical findings; ``dicom_seg`` and ``outputs`` write what a job produces; ``cli`` is
``spinecloud segment``.
"""
