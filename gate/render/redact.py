"""Patients' images in the figures, as the policy allows them out (spec.report.patient_images): shown,
blurred beyond recognition, or withheld. Applied once, before any report file is written, so that the
figure files, the HTML and the PDF all carry the same (redacted) pixels."""

from __future__ import annotations

import dataclasses
import io

from gate.validators import Figure

#: Gaussian blur radius (at least 8 px) as a share of the figure's shorter side: a brain slice drawn at ~150
#: pixels loses every anatomical detail, and the figure keeps its layout (where the pairs sit, the text)
BLUR_SHARE = 0.04


def redact(figures: dict[str, list[Figure]], mode: str) -> dict[str, list[Figure]]:
    if mode == "show":
        return figures
    return {check: [_redact_one(f, mode) if f.shows_real_images else f for f in items]
            for check, items in figures.items()}


def _redact_one(fig: Figure, mode: str) -> Figure:
    from PIL import Image, ImageDraw, ImageFilter

    with Image.open(io.BytesIO(fig.png)) as im:
        size = im.size
        if mode == "blur":
            out = im.convert("RGB").filter(ImageFilter.GaussianBlur(max(8.0, BLUR_SHARE * min(size))))
            note = "Patients' images blurred by policy (spec.report.patient_images: blur)."
        else:
            out = Image.new("RGB", size, (235, 235, 235))
            ImageDraw.Draw(out).text((10, size[1] // 2), "withheld by policy (spec.report.patient_images)",
                                     fill=(60, 60, 60))
            note = "Patients' images withheld by policy (spec.report.patient_images: withhold)."
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    caption = fig.caption if fig.caption.startswith(note) else f"{note} {fig.caption}".strip()  # rendered again
    return dataclasses.replace(fig, png=buf.getvalue(), caption=caption)
