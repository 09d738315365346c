"""SpineCloud training worker: datasets, SegResNet and nnU-Net v2 training, model registry.

Planned here (the training issue). Nothing is implemented yet.
"""
