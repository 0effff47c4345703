"""The imaging toolkit the validators share, as a public API: feature extractors (``extractors``),
distribution baselines (``baselines``), the square canvas of dihedral matching (``canvas``) and report
figures (``figures``). A validator imports these, and another validator only through that validator's
package (its ``__all__``), never its private modules: tests/test_import_boundaries.py keeps it so."""
