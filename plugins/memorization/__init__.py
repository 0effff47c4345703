"""Memorization validator: the Calibrated Memorization Index (Deo et al. 2026).

Public API for other plugins: :class:`Detector` (its ``reference_features`` fill and read the shared,
content-addressed reference cache) and :func:`subjects_of` (the subject a slice id names). Both load on
first use (PEP 562), so that importing a sub-command module of this package never pulls in torch."""

__all__ = ["Detector", "subjects_of"]


def __getattr__(name: str):
    if name == "Detector":
        from gate_plugins.memorization.detector import Detector

        return Detector
    if name == "subjects_of":
        from gate_plugins.memorization.grouping import subjects_of

        return subjects_of
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
