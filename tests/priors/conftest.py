"""Fixtures of the prior tests: the PACS holding the priors (tests/support/priors.py)."""

from tests.support.priors import prior_pacs

__all__ = ["prior_pacs"]
