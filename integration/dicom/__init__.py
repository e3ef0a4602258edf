"""DICOM edge: listener, durable instance store, header checks, study assembly, samples."""
