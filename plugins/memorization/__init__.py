"""Memorization validator: the Calibrated Memorization Index (Deo et al. 2026)."""
