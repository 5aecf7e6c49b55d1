"""How a dataset's cases are divided into train / val / test: one small class per strategy.

A split takes the dataset's case ids and optional groups (PH2: diagnosis) and
returns what ``split.json`` holds: the ids of each part, the strategy and its
settings, and a digest of the parts, so that runs can be checked to share one.
A new strategy is a new class here plus a YAML in ``conf/split/``.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError, UserError
from .validation import check_int, check_sizes

PARTS = ("train", "val", "test")


def split_digest(split: dict[str, list[str]]) -> str:
    """Short hash of the case ids of each part, so runs can be checked to share one split."""
    text = json.dumps({k: split[k] for k in PARTS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def interleave_by_group(ids: Sequence[str], groups: Sequence[str] | None, order: Sequence[str],
                        rng: np.random.Generator, weights: Sequence[int] | None = None) -> list[int]:
    """A seeded order of the indices of ``ids`` in which every contiguous slice holds the groups in
    the dataset's proportions.

    Without groups it is a plain permutation of the ids sorted. With groups, each group
    (visited in ``order``, then any others sorted) is shuffled and its members are spread
    evenly: member k of a group of n sits at position (k + 0.5) / n, ties broken at random.
    The result depends only on the sorted ids, the groups and the generator's state. ``weights`` (the
    cases of each subject, when the ids are subjects) spread the members by their cases instead: member
    k sits at the middle of its cases among its group's, so that slices hold each group's share of cases.
    """
    by_id = sorted(range(len(ids)), key=lambda i: ids[i])
    if groups is None:
        return [by_id[i] for i in rng.permutation(len(by_id))]
    labels = list(order) + sorted(set(groups) - set(order))
    keyed = []
    for label in labels:
        members = [i for i in by_id if groups[i] == label]
        if not members:
            continue
        members = [members[j] for j in rng.permutation(len(members))]
        if weights is None:
            keyed += [((k + 0.5) / len(members), rng.random(), i) for k, i in enumerate(members)]
            continue
        total, before = sum(weights[i] for i in members), 0
        for i in members:
            keyed.append(((before + weights[i] / 2) / total, rng.random(), i))
            before += weights[i]
    return [i for _, _, i in sorted(keyed)]


class Split:
    """Base of every split strategy: a seeded, stratified order of the cases (:func:`interleave_by_group`),
    which :meth:`assign` cuts into train / val / test."""

    name = "split"
    seed = 0

    def check(self, cases: int, what: str = "cases in the dataset") -> str | None:
        """Why this split cannot be made from ``cases`` cases (``what`` says which), or None."""
        return None

    def assign(self, order: list[int]) -> dict[str, list[int]]:
        """Positions (into the case list) of each part, given the seeded stratified order of all cases."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The strategy's own settings, recorded in split.json."""
        return {}

    def make(self, ids: Sequence[str], groups: Sequence[str] | None = None, group_order: Sequence[str] = (),
             group_key: str | None = None, subjects: Sequence[str] | None = None) -> dict:
        """What split.json holds: ``train``, ``val``, ``test`` (case ids), settings and ``digest``.

        With ``subjects`` (each case's patient or lesion), a subject's cases are never in two parts: the
        subjects are ordered as cases are (seeded, stratified by their cases' most common group) and the
        parts cut from that order, each subject going with its first case, so that sizes are met to
        within one subject's cases. split.json then records ``split_by`` and each case's subject."""
        problem = self.check(len(ids))
        if problem:
            raise UserError(problem)
        rng = np.random.default_rng(self.seed)
        if subjects is None:  # every case its own subject: exactly the split of segbench before subjects
            positions = self.assign(interleave_by_group(ids, groups, group_order, rng))
        else:
            positions = self._by_subject(ids, groups, group_order, subjects, rng)
        parts = {name: [ids[i] for i in positions[name]] for name in PARTS}
        record = {
            **parts,
            "strategy": self.name,
            **self.settings(),
            "seed": self.seed,
            "sizes": [len(parts[name]) for name in PARTS],
            "stratified_by": None if groups is None else (group_key or "group"),
            "digest": split_digest(parts),
        }
        if subjects is not None:
            used = {i for name in PARTS for i in positions[name]}
            record["split_by"] = "subject"
            record["subjects"] = {ids[i]: str(subjects[i]) for i in sorted(used, key=lambda i: ids[i])}
            record["subject_counts"] = [len({subjects[i] for i in positions[name]}) for name in PARTS]
        return record

    def _by_subject(self, ids: Sequence[str], groups: Sequence[str] | None, group_order: Sequence[str],
                    subjects: Sequence[str], rng: np.random.Generator) -> dict[str, list[int]]:
        from collections import Counter

        members: dict[str, list[int]] = {}
        for i in sorted(range(len(ids)), key=lambda i: ids[i]):
            members.setdefault(str(subjects[i]), []).append(i)
        names = sorted(members)
        labels = None
        if groups is not None:  # a subject's group: its cases' most common, ties to the first in order
            rank = {g: k for k, g in enumerate(list(group_order) + sorted(set(groups) - set(group_order)))}
            labels = [min(Counter(groups[i] for i in members[n]).most_common(),
                          key=lambda item: (-item[1], rank[item[0]]))[0] for n in names]
        units = interleave_by_group(names, labels, group_order, rng, [len(members[n]) for n in names])
        order = [i for u in units for i in members[names[u]]]
        cut = self.assign(order)
        part_of = {i: name for name in PARTS for i in cut[name]}
        positions: dict[str, list[int]] = {name: [] for name in PARTS}
        done: set[str] = set()
        for i in order:  # each subject goes where its first case in the order went (or is left out with it)
            subject = str(subjects[i])
            if subject in done:
                continue
            done.add(subject)
            if i in part_of:
                positions[part_of[i]].extend(members[subject])
        empty = [name for name in PARTS if not positions[name]]
        if empty:
            raise UserError(f"split by subject: {len(members)} subjects for {len(ids)} cases leave no subject for "
                            f"the {' and '.join(empty)} part of the {self.name} split; the parts need more "
                            "subjects (larger split.sizes for them, or fewer folds)")
        return positions


class Holdout(Split):
    """One deterministic train / val / test split, stratified by the dataset's groups when it has them.

    Args:
        sizes: (train, val, test) case counts; null = half / a quarter / a quarter of the
            dataset (the remainder goes to train): PH2's 100/50/50.
        seed: fixes the split, independently of the training seed.
    """

    name = "holdout"

    def __init__(self, sizes: Sequence[int] | None = None, seed: int = 0) -> None:
        self.sizes = None if sizes is None else check_sizes("sizes", sizes, 3, "train, val, test")
        self.seed = check_int("seed", seed)

    def sizes_for(self, cases: int) -> list[int]:
        if self.sizes is not None:
            return list(self.sizes)
        val = test = cases // 4
        return [cases - val - test, val, test]

    def check(self, cases: int, what: str = "cases in the dataset") -> str | None:
        sizes = self.sizes_for(cases)
        if sum(sizes) > cases:
            return (f"split.sizes: train={sizes[0]} + val={sizes[1]} + test={sizes[2]} = {sum(sizes)} "
                    f"exceed the {cases} {what}")
        if min(sizes) < 1:
            return f"split.sizes {sizes}: {cases} {what} are too few for three non-empty parts"
        return None

    def assign(self, order: list[int]) -> dict[str, list[int]]:
        parts, start = {}, 0
        for name, n in zip(PARTS, self.sizes_for(len(order))):
            parts[name] = order[start : start + n]
            start += n
        return parts


class KFold(Split):
    """Fold ``fold`` of a ``k``-fold cross-validation, stratified by the dataset's groups.

    The cases are put in one seeded, stratified order (:func:`interleave_by_group`) and cut into
    ``k`` contiguous parts: part ``fold`` is the test set, so every case is a test case in exactly
    one fold and each part holds the groups in the dataset's proportions (within one case). Val is
    the first ``val_size`` cases of the rest in the same order (stratified too), train the remainder.

    Args:
        k: number of folds (>= 2).
        fold: which one, 0..k-1.
        val_size: val cases; null = as many as a test part.
        seed: fixes the order, hence every fold (the same seed gives disjoint test parts).
    """

    name = "kfold"

    def __init__(self, k: int = 5, fold: int = 0, val_size: int | None = None, seed: int = 0) -> None:
        self.k = check_int("k", k, low=2)
        self.fold = check_int("fold", fold, low=0, high=self.k - 1)
        self.val_size = None if val_size is None else check_int("val_size", val_size, low=1)
        self.seed = check_int("seed", seed)

    def _bounds(self, cases: int) -> tuple[int, int, int]:
        """Start and end of the test part in the stratified order, and the val size."""
        start, end = self.fold * cases // self.k, (self.fold + 1) * cases // self.k
        return start, end, self.val_size if self.val_size is not None else end - start

    def check(self, cases: int, what: str = "cases in the dataset") -> str | None:
        if cases < self.k:
            return f"split.k={self.k} folds need at least {self.k} cases; there are {cases} {what}"
        start, end, val = self._bounds(cases)
        if cases - (end - start) - val < 1:
            return (f"split.val_size={val}: fold {self.fold} leaves {cases - (end - start)} of the {cases} {what} "
                    "for val and train; train would be empty")
        return None

    def assign(self, order: list[int]) -> dict[str, list[int]]:
        start, end, val = self._bounds(len(order))
        rest = order[:start] + order[end:]
        return {"train": rest[val:], "val": rest[:val], "test": order[start:end]}

    def settings(self) -> dict:
        return {"k": self.k, "fold": self.fold}


class FileSplit(Split):
    """The parts a user's file names: a CSV with columns ``id`` and ``part`` (``train``, ``val`` or
    ``test``), or a JSON object ``{"train": [ids], "val": [ids], "test": [ids]}`` (a run's split.json is one).

    Every id must be a case of the dataset and in one part only; cases the file does not name are
    not used. Args: path: the file (relative to the working directory, or absolute).
    """

    name = "file"

    def __init__(self, path: str) -> None:
        if path in (None, "", "???"):
            raise UserError("split.path is not set; expected a CSV (id,part) or JSON file naming each case's part")
        self.path = Path(str(path)).expanduser()

    def read(self) -> dict[str, list[str]]:
        """The ids of each part, as the file lists them; a DataError naming the file when malformed."""
        if not self.path.is_file():
            raise DataError(f"split.path: '{self.path}' is not a file; expected a CSV (id,part) or JSON split file")
        try:
            if self.path.suffix.lower() == ".json":
                raw = json.loads(self.path.read_text())
                if not isinstance(raw, dict) or not all(isinstance(raw.get(p), list) for p in PARTS):
                    raise ValueError('expected an object {"train": [ids], "val": [ids], "test": [ids]}')
                parts = {p: [str(c) for c in raw[p]] for p in PARTS}
            else:
                with open(self.path, newline="") as f:
                    reader = csv.DictReader(f)
                    if not reader.fieldnames or not {"id", "part"} <= set(reader.fieldnames):
                        raise ValueError(f"columns {reader.fieldnames}; expected id,part")
                    parts = {p: [] for p in PARTS}
                    for line, row in enumerate(reader, 2):
                        part = (row["part"] or "").strip()
                        if part not in parts:
                            raise ValueError(f"line {line}: part '{part}'; expected one of train, val, test")
                        parts[part].append(row["id"].strip())
        except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            raise DataError(f"split.path: cannot use '{self.path}': {exc}") from exc
        return parts

    def parts(self) -> dict[str, list[str]]:
        """:meth:`read`, with every part non-empty."""
        parts = self.read()
        empty = [p for p in PARTS if not parts[p]]
        if empty:
            raise DataError(f"split.path: '{self.path}' names no {' and no '.join(empty)} case")
        return parts

    def check(self, cases: int, what: str = "cases in the dataset") -> str | None:
        try:
            self.parts()
        except DataError as exc:
            return str(exc)
        return None

    def make(self, ids: Sequence[str], groups: Sequence[str] | None = None, group_order: Sequence[str] = (),
             group_key: str | None = None, subjects: Sequence[str] | None = None) -> dict:
        parts, known, seen = self.parts(), set(ids), {}
        for part in PARTS:
            for case in parts[part]:
                if case in seen:
                    raise DataError(f"split.path: case '{case}' is in '{seen[case]}' and in '{part}' in "
                                    f"'{self.path}'; each case belongs to one part")
                seen[case] = part
        unknown = [c for c in seen if c not in known]
        if unknown:
            raise DataError(f"split.path: '{self.path}' names {len(unknown)} case(s) the dataset does not have, "
                            f"e.g. {', '.join(unknown[:3])} (its ids look like {', '.join(sorted(ids)[:2])})")
        record = {
            **parts, "strategy": self.name, "path": str(self.path), "seed": None,
            "sizes": [len(parts[p]) for p in PARTS], "stratified_by": None, "digest": split_digest(parts),
        }
        if subjects is not None:
            subject_of = dict(zip(ids, (str(x) for x in subjects)))
            where: dict[str, tuple[str, str]] = {}
            for part in PARTS:
                for case in parts[part]:
                    subject = subject_of[case]
                    first = where.setdefault(subject, (part, case))
                    if first[0] != part:
                        raise DataError(f"split.path: subject '{subject}' has case '{first[1]}' in '{first[0]}' and "
                                        f"case '{case}' in '{part}' in '{self.path}'; a subject's cases belong to "
                                        "one part (the dataset's subjects: dataset.subjects)")
            record["split_by"] = "subject"
            record["subjects"] = {case: subject_of[case] for case in sorted(seen)}
            record["subject_counts"] = [len({subject_of[c] for c in parts[p]}) for p in PARTS]
        return record
