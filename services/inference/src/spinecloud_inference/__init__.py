"""SpineCloud inference worker: CT series in, labelled spine DICOM-SEG out.

Planned here (the inference issue): model artefacts and loaders (MONAI bundle, nnU-Net v2),
the segmentation pipeline, DICOM-SEG output and the Celery task on the ``inference`` queue.
Nothing is implemented yet.
"""
