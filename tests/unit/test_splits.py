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
