"""vertseg: semi-supervised vertebra segmentation and identification in spine CT."""

__version__ = "0.1.0"
