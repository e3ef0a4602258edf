"""The prior sources' configuration model, under the name the priors package uses.

:class:`PriorSource` is defined in :mod:`integration.prior_sources` (the settings read it, and a module of
this package would close an import cycle through them); this module names it where the archive clients live.
"""

from __future__ import annotations

from integration.prior_sources import LOCAL_SOURCE, PriorSource, unique_source_names

__all__ = ["LOCAL_SOURCE", "PriorSource", "unique_source_names"]
