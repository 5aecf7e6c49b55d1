"""Split strategies: determinism, stratification, sizes, and the digests existing runs were made with."""
import collections

import pytest

from segbench.data import SyntheticDermoscopy
from segbench.errors import UserError
from segbench.splits import Holdout, KFold, split_digest

IDS = [f"C{i:03d}" for i in range(200)]
GROUPS = ["a"] * 80 + ["b"] * 80 + ["c"] * 40


def test_holdout_is_deterministic_and_disjoint():
    ids = IDS[:30]
    a = Holdout([10, 5, 5], seed=3).make(ids)
    assert a == Holdout([10, 5, 5], seed=3).make(list(reversed(ids)))  # input order does not matter
    assert a["digest"] != Holdout([10, 5, 5], seed=4).make(ids)["digest"]
    assert [len(a[k]) for k in ("train", "val", "test")] == [10, 5, 5]
    assert len(set(a["train"]) | set(a["val"]) | set(a["test"])) == 20
    assert a["digest"] == split_digest(a) and a["strategy"] == "holdout" and a["stratified_by"] is None


def test_holdout_is_stratified_by_groups():
    split = Holdout([100, 50, 50]).make(IDS, GROUPS, group_key="kind")
    label = dict(zip(IDS, GROUPS))
    counts = {k: collections.Counter(label[c] for c in split[k]) for k in ("train", "val", "test")}
    assert counts["train"] == {"a": 40, "b": 40, "c": 20}
    assert counts["val"] == counts["test"] == {"a": 20, "b": 20, "c": 10}
    assert split["stratified_by"] == "kind"


def test_default_sizes_are_half_and_quarters():
    assert Holdout().sizes_for(200) == [100, 50, 50]
    assert Holdout().sizes_for(13) == [7, 3, 3]
    assert Holdout([5, 2, 2]).sizes_for(13) == [5, 2, 2]


def test_holdout_digests_are_those_of_earlier_runs():
    """The synthetic splits segbench made before splits were a component (the PH2 one is pinned in test_data)."""
    assert Holdout().make(SyntheticDermoscopy(image_size=16).ids)["digest"] == "b8fba8213555f899"
    assert Holdout().make(SyntheticDermoscopy(num_cases=12, image_size=16).ids)["digest"] == "577b710331bd9fab"


def test_split_larger_than_dataset_names_the_numbers():
    with pytest.raises(UserError, match=r"split.sizes: train=100 \+ val=50 \+ test=60 = 210 exceed the 200 cases"):
        Holdout([100, 50, 60]).make(IDS)
    with pytest.raises(UserError, match="2 cases in the dataset are too few"):
        Holdout().make(IDS[:2])


@pytest.mark.parametrize("sizes", [[10, 0, 5], [10, 5], [10, 5, -1], [10, 5, 2.5]])
def test_holdout_rejects_bad_sizes(sizes):
    with pytest.raises(UserError, match=r"^sizes=.* is invalid; expected three integers >= 1"):
        Holdout(sizes)


# -- k-fold --------------------------------------------------------------------------------------------


def test_kfold_test_parts_are_disjoint_and_cover_every_case():
    folds = [KFold(5, f).make(IDS, GROUPS) for f in range(5)]
    tests = [set(f["test"]) for f in folds]
    assert set().union(*tests) == set(IDS) and sum(map(len, tests)) == 200
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and not (set(f["train"]) | set(f["val"])) & set(f["test"])
        assert [len(f[p]) for p in ("train", "val", "test")] == [120, 40, 40]
        assert f["strategy"] == "kfold" and f["k"] == 5
    assert len({f["digest"] for f in folds}) == 5
    assert KFold(5, 2).make(list(reversed(IDS)), list(reversed(GROUPS))) == folds[2]  # deterministic


def test_kfold_parts_are_stratified_within_one_case():
    label = dict(zip(IDS, GROUPS))
    for fold in range(5):
        split = KFold(5, fold, seed=3).make(IDS, GROUPS)
        for part, n in (("test", 40), ("val", 40)):
            counts = collections.Counter(label[c] for c in split[part])
            for group, total in collections.Counter(GROUPS).items():
                assert abs(counts[group] - total * n / 200) <= 1, (fold, part, group, counts)


def test_kfold_settings_are_checked():
    with pytest.raises(ValueError, match=r"^fold=5 is invalid; expected an integer >= 0 and <= 4"):
        KFold(5, 5)
    with pytest.raises(ValueError, match="^k=1 is invalid"):
        KFold(1, 0)
    with pytest.raises(ValueError, match="train would be empty"):
        KFold(2, 0, val_size=5).make(IDS[:10])
    assert Holdout().make(IDS, GROUPS)["digest"] == Holdout().make(IDS, GROUPS)["digest"]


# subjects: 200 cases of 80 subjects of 1 to 4 cases each (a subject's cases share its group)
SIZES = [1, 2, 3, 4] * 20
SUBJECTS = [f"S{k:02d}" for k, n in enumerate(SIZES) for _ in range(n)]
SUBJECT_GROUPS = [("a", "b", "c", "a", "b")[k % 5] for k, n in enumerate(SIZES) for _ in range(n)]


def _parts_of_subjects(split):
    subject = dict(zip(IDS, SUBJECTS))
    where = collections.defaultdict(set)
    for part in ("train", "val", "test"):
        for case in split[part]:
            where[subject[case]].add(part)
    return where


def test_without_subjects_a_split_is_todays():
    for split in (Holdout([100, 50, 50]), KFold(5, 2)):
        made = split.make(IDS, GROUPS)
        assert "split_by" not in made and "subjects" not in made
        assert made == split.make(IDS, GROUPS, subjects=None)


def test_kfold_by_subject_never_puts_a_subject_in_two_parts():
    tests = []
    for fold in range(5):
        split = KFold(5, fold).make(IDS, SUBJECT_GROUPS, subjects=SUBJECTS)
        assert all(len(parts) == 1 for parts in _parts_of_subjects(split).values())
        assert split["split_by"] == "subject" and split["subjects"]["C000"] == "S00"
        assert sum(split["sizes"]) == 200 and sum(split["subject_counts"]) == 80
        assert 40 - 4 < len(split["test"]) < 40 + 4  # sizes within one subject's cases
        tests.append(set(split["test"]))
    assert set().union(*tests) == set(IDS) and sum(map(len, tests)) == 200  # every case a test case once
    label = dict(zip(IDS, SUBJECT_GROUPS))
    share = {g: n / 200 for g, n in collections.Counter(SUBJECT_GROUPS).items()}
    for test in tests:  # stratified by the subjects' groups: each group near its share of all cases
        counts = collections.Counter(label[c] for c in test)
        assert all(abs(counts[g] / len(test) - share[g]) < 0.1 for g in share)


def test_holdout_by_subject_keeps_the_sizes_within_a_subject_and_is_deterministic():
    split = Holdout([100, 50, 50], seed=1).make(IDS, subjects=SUBJECTS)
    assert all(len(parts) == 1 for parts in _parts_of_subjects(split).values())
    assert all(abs(n - want) < 4 for n, want in zip(split["sizes"], [100, 50, 50]))
    assert split == Holdout([100, 50, 50], seed=1).make(list(reversed(IDS)), subjects=list(reversed(SUBJECTS)))
    assert split["digest"] != Holdout([100, 50, 50], seed=1).make(IDS)["digest"]
    # one subject per case: the same parts as without subjects
    alone = Holdout([100, 50, 50], seed=1).make(IDS, GROUPS, subjects=IDS)
    assert {k: alone[k] for k in ("train", "val", "test")} == {k: v for k, v in Holdout(
        [100, 50, 50], seed=1).make(IDS, GROUPS).items() if k in ("train", "val", "test")}


def test_too_few_subjects_for_the_parts_are_named():
    with pytest.raises(UserError, match=r"2 subjects for 6 cases leave no subject for the test part"):
        Holdout([2, 2, 2]).make(IDS[:6], subjects=["x", "x", "x", "y", "y", "y"])


def test_a_split_file_that_puts_a_subject_in_two_parts_is_refused(tmp_path):
    from segbench.errors import DataError
    from segbench.splits import FileSplit

    ids, subjects = ["c0", "c1", "c2", "c3"], ["p1", "p1", "p2", "p3"]
    path = tmp_path / "split.csv"
    path.write_text("id,part\nc0,train\nc2,val\nc1,test\nc3,test\n")
    with pytest.raises(DataError, match=r"subject 'p1' has case 'c0' in 'train' and case 'c1' in 'test'"):
        FileSplit(str(path)).make(ids, subjects=subjects)
    path.write_text("id,part\nc0,train\nc1,train\nc2,val\nc3,test\n")
    made = FileSplit(str(path)).make(ids, subjects=subjects)
    assert made["split_by"] == "subject" and made["subject_counts"] == [1, 1, 1]
