"""Moved to :mod:`integration.intake` (the one way in); kept for importers not yet moved."""

from integration.intake.intake import InstanceIntake, intake_for
from integration.intake.outcome import STOW_AE, UPLOAD_AE, Origin, StoreOutcome
from integration.intake.part10 import split_part10

__all__ = ["STOW_AE", "UPLOAD_AE", "InstanceIntake", "Origin", "StoreOutcome", "intake_for", "split_part10"]
