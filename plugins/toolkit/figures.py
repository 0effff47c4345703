"""Report figures: a matplotlib figure as the PNG bytes a :class:`gate.validators.Figure` carries."""

from __future__ import annotations

import io


def png(fig) -> bytes:
    """The figure as PNG (90 dpi, tight), closed afterwards so that a long run does not keep every figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
