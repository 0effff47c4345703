"""The parts of a report that a board reads rather than a machine: failed rules said in words, and the
independence of the data sets. Pure functions over what the run already holds; nothing is read again."""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from gate.imageset import ImageSet
from gate.report import CheckResult, Finding, Independence, SetOverlap
from gate.textsafe import one_line

#: subject ids in file names: BIDS ``sub-<label>`` (a label holding a digit: ``sub-sampled`` is a word), else
#: ``subject``/``subj``/``patient``/``pat`` and a number
SUBJECT_PATTERN = r"(?i)(?:^|[^a-z0-9])(?:sub-([a-z]*\d[a-z0-9]*)|(?:subject|subj|patient|pat)[-_]?(\d+))"
_SUBJECT = re.compile(SUBJECT_PATTERN)

DEFAULT_ACTION = ("Look at this check's evidence (its figures and samples table) to see which samples fail and why; "
                  "fix the generator or its training data and register a new version. Do not promote this one.")


def findings(checks: Sequence[CheckResult], advice: Mapping[str, Mapping[str, str]] | None = None) -> list[Finding]:
    """One :class:`Finding` per block rule that failed, and one per check that could not run. ``advice``:
    check id -> (metric or ``"*"``) -> what to do, from the check's validator."""
    found = []
    for check in checks:
        own = (advice or {}).get(check.id, {})
        for rule in check.rules:
            if rule.passed or rule.severity != "block":
                continue
            what = check.metric_descriptions.get(rule.metric, rule.metric)
            if rule.value is None:
                meaning = (f"{what}: it could not be computed on this candidate, so the rule cannot be shown to "
                           f"hold and the candidate is not validated.")
            else:
                meaning = (f"{what}: the candidate scores {rule.value:.4g}; the policy requires {rule.condition}"
                           f"{_how_far(rule.value, rule.bounds)}.")
            found.append(Finding(rule=f"{check.id}.{rule.metric}", value=rule.value, condition=rule.condition,
                                 meaning=meaning, action=own.get(rule.metric) or own.get("*") or DEFAULT_ACTION))
        if check.status == "error" and not _only_nan_rules(check):
            found.append(Finding(rule=f"{check.id} (check)", value=None, condition="runs to the end",
                                 meaning=f"The check did not finish, so nothing it guards is shown to hold: "
                                         f"{one_line(check.error or 'unknown error', 600)}",
                                 action="Fix the cause named here (input data, policy or environment) and validate "
                                        "again; a check that did not run never counts as passed."))
    return found


def _only_nan_rules(check: CheckResult) -> bool:
    """Whether a check's error is only that block rules' metrics were NaN (already a finding each)."""
    parts = [p for p in (check.error or "").split("; ") if p]
    return bool(parts) and all(p.startswith("metric ") and "could not be computed (NaN)" in p for p in parts)


def _how_far(value: float, bounds: Mapping[str, float]) -> str:
    """How far outside its bound a value lies, in the bound's units (a reader's sense of scale)."""
    gaps = [value - b if k in ("lt", "lte") else b - value for k, b in bounds.items()]
    worst = max(gaps) if gaps else 0.0
    return f", {abs(worst):.3g} beyond the bound" if worst > 0 else ""


def subject_ids(names: Iterable[str]) -> set[str]:
    """Subject ids found in file names (``sub-07``, ``subject_07``, ``patient-7``: all ``7``), as strings
    without leading zeros, so that ``sub-007`` in one set and ``subject_7`` in another are one subject."""
    out = set()
    for name in names:
        for m in _SUBJECT.finditer(name.rsplit("/", 1)[-1]):
            raw = (m.group(1) or m.group(2)).lower()
            out.add((raw.lstrip("0") or "0") if raw.isdigit() else raw)
    return out


def is_label_file(path: str) -> bool:
    """A labelled folder is images/ beside labels/ (gate.imageio.pair_labels): its label maps sit in labels/."""
    return path.replace("\\", "/").rsplit("/", 2)[-2:-1] == ["labels"]


def image_digests(images: np.ndarray) -> set[str]:
    """One sha256 per image, of its pixels as float32: equal only for exactly equal images. Constant images
    (an empty slice above the head) are left out: two sets sharing a blank slice share no subject."""
    return {hashlib.sha256(np.ascontiguousarray(im, dtype=np.float32).tobytes()).hexdigest() for im in images
            if im.size and im.max() > im.min()}


def independence(sets: Sequence[ImageSet]) -> Independence:
    """Exact overlaps between every pair of sets: the same file (content hash), the same image (pixels),
    the same subject id in file names. Overlap between train and holdout makes the holdout's evidence
    worthless; a candidate image equal to a train image is a copy, whatever the checks said."""
    # label maps are not subjects' images: two empty label maps are equal without any leak
    files = {s.name: {e.sha256: e.path for e in s.manifest if not is_label_file(e.path)} for s in sets}
    pixels = {s.name: image_digests(s.images) for s in sets}
    subjects = {s.name: subject_ids(e.path for e in s.manifest) for s in sets}
    pairs = []
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            shared = sorted(set(files[a.name]) & set(files[b.name]))
            both_subjects = sorted(subjects[a.name] & subjects[b.name])
            examples = [one_line(files[a.name][h].rsplit("/", 1)[-1], 60) for h in shared[:3]] \
                + [f"subject {one_line(s, 20)}" for s in both_subjects[:3]]
            pairs.append(SetOverlap(sets=(a.name, b.name), shared_files=len(shared),
                                    shared_images=len(pixels[a.name] & pixels[b.name]),
                                    shared_subjects=len(both_subjects), examples=examples))
    return Independence(subject_pattern=SUBJECT_PATTERN, subjects={k: len(v) for k, v in subjects.items()},
                        pairs=pairs)
