"""Which subject each image belongs to, from its id: a holdout image's non-members (the membership
contrast's second term) must exclude the other slices of its own subject, which look like it."""

from __future__ import annotations

import re
from typing import Sequence

_LAST_NUMBER = re.compile(r"[0-9]+(?=[^0-9]*$)")


def subject_of(image_id: str, pattern: re.Pattern[str] | None = None) -> str:
    """The subject of one image.

    - a volume's slices (``FILE#Z``) share their file;
    - with ``pattern``, its first group (or its match) in the id; an id it misses is its own subject;
    - else the file name without its last number: the slice index of ``sub-01_slice-040.png`` or
      ``patient12_z34.npy``, so that both group by subject (``sub-01_slice-.png``, ``patient12_z.npy``).
    """
    if "#" in image_id:
        return "volume:" + image_id.rpartition("#")[0]
    if pattern is not None:
        found = pattern.search(image_id)
        if found is None:
            return "file:" + image_id
        return "subject:" + (found.group(1) if pattern.groups else found.group(0))
    return "stem:" + _LAST_NUMBER.sub("", image_id, count=1)


def subjects_of(ids: Sequence[str], pattern: str | None = None) -> list[str]:
    """Every image's subject (see :func:`subject_of`). When the file-name rule puts all images in one
    group, the names carry no subject (``img_0001.png`` ...): each image is then its own subject."""
    compiled = re.compile(pattern) if pattern is not None else None
    groups = [subject_of(i, compiled) for i in ids]
    if compiled is None and len(ids) > 1 and len(set(groups)) == 1 and groups[0].startswith("stem:"):
        return ["file:" + i for i in ids]
    return groups
