"""Who may do what: sign-in, sessions and CSRF, object-level access, DICOMweb credentials, request limits, refusals."""
