"""The real PH2 copy (SEGBENCH_PH2_ROOT; skipped with the reason when it is absent): decoded, split, checked."""
import collections
import json

import torch

from segbench import check_data
from segbench.data import PH2
from segbench.splits import Holdout


def test_real_ph2(ph2_root, tmp_path):
    data = PH2(ph2_root, image_size=32, cache_dir=tmp_path)
    arrays = data.arrays
    assert data.cache_hit is False
    assert len(arrays) == 200 and arrays.ids[0] == "IMD002"
    assert arrays.images.shape == (200, 3, 32, 32) and arrays.images.dtype == torch.uint8
    assert arrays.masks.shape == (200, 1, 32, 32) and set(arrays.masks.unique().tolist()) == {0, 1}
    assert collections.Counter(arrays.groups) == {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
    lesion = arrays.masks.float().mean((1, 2, 3))
    assert (lesion > 0).all() and (lesion < 1).all()
    split = Holdout().make(data.ids, data.groups, data.group_order, data.group_key)
    assert [len(split[k]) for k in ("train", "val", "test")] == [100, 50, 50]
    label = dict(zip(arrays.ids, arrays.groups))
    test_groups = collections.Counter(label[c] for c in split["test"])
    assert test_groups == {"common_nevus": 20, "atypical_nevus": 20, "melanoma": 10}
    # the split every PH2 run before segbench's split component had: runs stay comparable
    assert split["digest"] == "811d4aba2fb15ff7" and split["test"][:3] == ["IMD171", "IMD399", "IMD058"]
    assert Holdout(seed=3).make(data.ids, data.groups, data.group_order)["digest"] == "06a4eb0b8737c663"
    assert split["stratified_by"] == "diagnosis"
    again = PH2(ph2_root, image_size=32, cache_dir=tmp_path)
    assert again.ids == data.ids and again.cache_hit is True
    assert torch.equal(again.arrays.images, arrays.images)
    json.dumps(split)  # what split.json holds is plain JSON


def test_check_data_on_real_ph2(ph2_root, capsys):
    assert check_data.main(["dataset=ph2", f"dataset.root={ph2_root}"]) == 0
    assert "OK: no problems found; 200 readable cases" in capsys.readouterr().out
