"""DICOMweb: STOW-RS intake and its streaming multipart/related parser."""
