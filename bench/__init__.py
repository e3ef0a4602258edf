"""Benchmarks of pacs-vlm against reference DICOM receivers (run ``python -m bench.ingest``)."""
