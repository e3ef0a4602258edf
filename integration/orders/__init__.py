"""RIS orders in (HL7 v2 over MLLP, FHIR ServiceRequest) and MPPS: what the radiologist's reading is for."""
