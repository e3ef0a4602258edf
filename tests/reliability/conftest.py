"""Fixtures of the reliability tests: the web tests' ``pacs-vlm api`` process fixture, shared."""

from __future__ import annotations

from tests.web.conftest import start_api

__all__ = ["start_api"]
