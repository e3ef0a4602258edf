"""pacs-vlm's hospital-facing edge: DICOM and DICOMweb in, store, queue, review.

This package never imports torch, transformers or :mod:`worker`.
"""

__version__ = "0.1.0"
