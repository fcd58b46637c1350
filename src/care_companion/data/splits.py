"""Patient-grouped, class-stratified, seeded splits (the proposal's 80/8/10/1/1)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test", "canary", "production")
DEFAULT_FRACTIONS: tuple[float, ...] = (0.80, 0.08, 0.10, 0.01, 0.01)


def grouped_stratified_split(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    names: Sequence[str] = SPLITS,
) -> list[str]:
    """Assign every item to a split so that no group spans two splits and each class keeps the fractions.

    Each group is filed under its most common label; within a label, groups are shuffled by ``seed``
    (after sorting, so input order does not matter) and each goes to the split furthest below its target
    image count. Small classes therefore fill the large splits first and the tiny ones as they can.

    Args:
        labels: class of each item.
        groups: group (patient) of each item; items without a patient should get a unique group each.
        seed: makes the assignment repeatable.
        fractions: target share of each split, summing to 1.
        names: split names, aligned with ``fractions``.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    if abs(sum(fractions) - 1.0) > 1e-6 or len(fractions) != len(names):
        raise ValueError("fractions must sum to 1 and match the split names")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_label: dict[str, list[str]] = defaultdict(list)
    for g, idx in members.items():
        label = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_label[label].append(g)

    rng = np.random.default_rng(seed)
    target = np.asarray(fractions, dtype=float)
    out = [""] * len(labels)
    for label in sorted(by_label):
        label_groups = sorted(by_label[label])
        rng.shuffle(label_groups)
        total = sum(len(members[g]) for g in label_groups)
        filled = np.zeros(len(names))
        for g in label_groups:
            size = len(members[g])
            # deficit after adding this group, relative to each split's target: pick the split it fits best
            deficit = target * total - filled
            k = int(np.argmax(deficit))
            filled[k] += size
            for i in members[g]:
                out[i] = names[k]
    return out
