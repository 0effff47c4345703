"""Image-quality validator: MRIQC-style measures, MRI-NIQE, distribution metrics and the self-test that
decides which of them may block.

Public API for other plugins: :func:`sensitivity_table` (the self-test's matrix as a printed table, for
``gate bench iqa``)."""


def sensitivity_table(*args, **kwargs) -> str:
    """See :func:`gate_plugins.quality.bench.sensitivity_table` (imported on use: it loads the extractors)."""
    from gate_plugins.quality.bench import sensitivity_table as table

    return table(*args, **kwargs)


__all__ = ["sensitivity_table"]
