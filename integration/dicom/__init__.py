"""DICOM network only: associations, the upper layer, DIMSE, admission of peers, TLS, named statuses.

Received data sets are handed to :mod:`integration.intake`, the one way in; nothing here writes a file
or a row of its own.
"""
