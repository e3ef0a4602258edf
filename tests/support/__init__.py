"""Helpers the tests share: real peers (listener, worker, Orthanc, model server), services, records, certificates."""
