"""Reports out: DICOM SR drafts and signed reports, FHIR DiagnosticReport, HL7 v2 ORU."""
