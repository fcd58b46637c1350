from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from care_companion.data.splits import DEFAULT_FRACTIONS, SPLITS, grouped_stratified_split


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for p in range(1500):
        label = rng.choice(["normal", "pneumonia", "tuberculosis"], p=[0.5, 0.35, 0.15])
        for _ in range(int(rng.integers(1, 4))):
            labels.append(str(label))
            groups.append(f"patient{p}")
    return labels, groups


def test_no_patient_in_two_splits():
    labels, groups = _data()
    splits = grouped_stratified_split(labels, groups, seed=1)
    where: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        where.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in where.values())


def test_fractions_per_class_are_close_to_target():
    labels, groups = _data()
    splits = grouped_stratified_split(labels, groups, seed=1)
    for label in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        counts = Counter(splits[i] for i in idx)
        for name, frac in zip(SPLITS, DEFAULT_FRACTIONS, strict=True):
            assert counts[name] / len(idx) == pytest.approx(frac, abs=0.02), (label, name)


def test_deterministic_and_order_independent():
    labels, groups = _data()
    a = grouped_stratified_split(labels, groups, seed=3)
    assert a == grouped_stratified_split(labels, groups, seed=3)
    perm = np.random.default_rng(0).permutation(len(labels))
    b = grouped_stratified_split([labels[i] for i in perm], [groups[i] for i in perm], seed=3)
    assert [b[list(perm).index(i)] for i in range(0, len(labels), 97)] == [a[i] for i in range(0, len(labels), 97)]
    assert a != grouped_stratified_split(labels, groups, seed=4)


def test_rejects_bad_fractions():
    with pytest.raises(ValueError):
        grouped_stratified_split(["a"], ["g"], seed=0, fractions=(0.5, 0.5, 0.5, 0, 0))
