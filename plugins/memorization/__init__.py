"""Memorization validator: the Calibrated Memorization Index (Deo et al. 2026).

Public API for other plugins: :class:`Detector` (its ``reference_features`` fill and read the shared,
content-addressed reference cache) and :func:`subjects_of` (the subject a slice id names)."""

from gate_plugins.memorization.detector import Detector
from gate_plugins.memorization.grouping import subjects_of

__all__ = ["Detector", "subjects_of"]
