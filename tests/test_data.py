import collections
import json

import numpy as np
import pytest
import torch
from skimage import io as skio

from segbench.data import PH2, DataError, SyntheticDermoscopy, make_split
from segbench.trainer import Normalizer
from tests.conftest import write_case


# -- split -----------------------------------------------------------------
def test_split_is_deterministic_and_disjoint():
    ids = [f"C{i:03d}" for i in range(30)]
    a = make_split(ids, [10, 5, 5], seed=3)
    assert a == make_split(list(reversed(ids)), [10, 5, 5], seed=3)  # input order does not matter
    assert a != make_split(ids, [10, 5, 5], seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [10, 5, 5]
    assert len(set(a["train"]) | set(a["val"]) | set(a["test"])) == 20


def test_split_is_stratified():
    ids = [f"C{i:03d}" for i in range(200)]
    strata = [0] * 80 + [1] * 80 + [2] * 40
    label = dict(zip(ids, strata))
    split = make_split(ids, [100, 50, 50], seed=0, strata=strata)
    counts = {k: collections.Counter(label[c] for c in split[k]) for k in ("train", "val", "test")}
    assert counts["train"] == {0: 40, 1: 40, 2: 20}
    assert counts["val"] == counts["test"] == {0: 20, 1: 20, 2: 10}


def test_split_larger_than_dataset_names_the_numbers():
    with pytest.raises(ValueError, match=r"dataset.split_sizes: train=100 \+ val=50 \+ test=60 = 210 exceed the 200 cases"):
        make_split([f"C{i}" for i in range(200)], [100, 50, 60], seed=0)


@pytest.mark.parametrize("sizes", [[10, 0, 5], [10, 5], [10, 5, -1]])
def test_split_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="dataset.split_sizes"):
        make_split([f"C{i}" for i in range(30)], sizes, seed=0)


# -- synthetic ---------------------------------------------------------------
def test_synthetic_is_deterministic():
    a = SyntheticDermoscopy(num_cases=6, image_size=32, split_sizes=[2, 2, 2]).arrays
    b = SyntheticDermoscopy(num_cases=6, image_size=32, split_sizes=[2, 2, 2]).arrays
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    c = SyntheticDermoscopy(num_cases=6, image_size=32, split_sizes=[2, 2, 2], seed=1).arrays
    assert not torch.equal(a.images, c.images)
    # case i does not depend on how many cases are generated
    d = SyntheticDermoscopy(num_cases=3, image_size=32, split_sizes=[1, 1, 1]).arrays
    assert torch.equal(d.images, a.images[:3])


def test_synthetic_shapes_and_masks():
    data = SyntheticDermoscopy(num_cases=10, image_size=48, split_sizes=[6, 2, 2]).arrays
    assert data.images.shape == (10, 3, 48, 48) and data.images.dtype == torch.uint8
    assert data.masks.shape == (10, 1, 48, 48) and set(data.masks.unique().tolist()) == {0, 1}
    fraction = data.masks.float().mean((1, 2, 3))
    assert (fraction > 0.01).all() and (fraction < 0.9).all()  # every case has a lesion and background


# -- PH2 reader on a small fake tree -----------------------------------------
def test_fake_ph2_layout(fake_ph2, tmp_path):
    data = PH2(fake_ph2, image_size=16, split_sizes=[3, 3, 3], cache_dir=None)
    arrays = data.arrays
    assert arrays.ids == [f"IMD{i:03d}" for i in range(1, 10)]  # .DS_Store and notes/ ignored
    assert arrays.images.shape == (9, 3, 16, 16) and arrays.masks.shape == (9, 1, 16, 16)
    assert set(arrays.masks.unique().tolist()) == {0, 1}
    assert arrays.diagnosis == [i % 3 for i in range(9)]
    # the images folder itself is an accepted root, with the same split
    inner = PH2(fake_ph2 / "PH2 Dataset images", image_size=16, split_sizes=[3, 3, 3], cache_dir=None)
    assert inner.split() == data.split()


def test_bool_and_rgb_masks_decode_alike(tmp_path):
    images = tmp_path / "imgs"
    write_case(images, "IMD001", mask_values=(0, 255))
    write_case(images, "IMD002", mask_values=(0, 1))
    folder = write_case(images, "IMD003", mask=False)
    (folder / "IMD003_lesion").mkdir()
    m = np.zeros((40, 48, 3), np.uint8)
    m[10:30, 12:36] = 255
    skio.imsave(folder / "IMD003_lesion" / "IMD003_lesion.png", m, check_contrast=False)
    arrays = PH2(images, image_size=40, split_sizes=[1, 1, 1], cache_dir=None).arrays
    assert torch.equal(arrays.masks[0], arrays.masks[1]) and torch.equal(arrays.masks[1], arrays.masks[2])


def test_ph2_cache_hit(fake_ph2, tmp_path):
    first = PH2(fake_ph2, image_size=16, split_sizes=[3, 3, 3], cache_dir=tmp_path / "cache")
    a = first.arrays
    assert first.cache_hit is False and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = PH2(fake_ph2, image_size=16, split_sizes=[3, 3, 3], cache_dir=tmp_path / "cache")
    b = second.arrays
    assert second.cache_hit is True and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    # same layout too, so that the normaliser (and everything after it) computes bit-identically
    assert a.images.stride() == b.images.stride() and a.images.is_contiguous()
    assert Normalizer.fit(a.images).mean == Normalizer.fit(b.images).mean
    other_size = PH2(fake_ph2, image_size=24, split_sizes=[3, 3, 3], cache_dir=tmp_path / "cache")
    other_size.arrays
    assert other_size.cache_hit is False


# -- bad input ---------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        PH2(missing, image_size=16, split_sizes=[1, 1, 1]).arrays
    assert str(missing) in str(err.value) and "dataset=synthetic" in str(err.value)
    assert "IMD002_Dermoscopic_Image" in str(err.value)  # shows the expected layout


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match="no PH2 case folders found") as err:
        PH2(tmp_path, image_size=16, split_sizes=[1, 1, 1]).arrays
    assert "dataset=synthetic" in str(err.value)


def test_case_without_mask_names_it(fake_ph2):
    write_case(fake_ph2 / "PH2 Dataset images", "IMD099", mask=False)
    with pytest.raises(DataError, match="case 'IMD099' has no lesion mask") as err:
        PH2(fake_ph2, image_size=16, split_sizes=[1, 1, 1]).arrays
    assert "IMD099_lesion" in str(err.value)


def test_unreadable_image_names_the_file(fake_ph2):
    bad = fake_ph2 / "PH2 Dataset images" / "IMD004" / "IMD004_Dermoscopic_Image" / "IMD004.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError, match="cannot read image file") as err:
        PH2(fake_ph2, image_size=16, split_sizes=[1, 1, 1], cache_dir=None).arrays
    assert str(bad) in str(err.value)


def test_mask_of_wrong_size_names_the_file(fake_ph2):
    mask = fake_ph2 / "PH2 Dataset images" / "IMD005" / "IMD005_lesion" / "IMD005_lesion.png"
    skio.imsave(mask, np.zeros((10, 10), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match="must match") as err:
        PH2(fake_ph2, image_size=16, split_sizes=[1, 1, 1], cache_dir=None).arrays
    assert str(mask) in str(err.value)


def test_split_too_large_for_ph2(fake_ph2):
    with pytest.raises(ValueError, match="exceed the 9 cases"):
        PH2(fake_ph2, image_size=16, split_sizes=[5, 3, 3], cache_dir=None).split()


# -- the real PH2 copy -------------------------------------------------------
def test_real_ph2(ph2_root, tmp_path):
    data = PH2(ph2_root, image_size=32, cache_dir=tmp_path)
    arrays = data.arrays
    assert data.cache_hit is False
    assert len(arrays) == 200 and arrays.ids[0] == "IMD002"
    assert arrays.images.shape == (200, 3, 32, 32) and arrays.images.dtype == torch.uint8
    assert arrays.masks.shape == (200, 1, 32, 32) and set(arrays.masks.unique().tolist()) == {0, 1}
    assert collections.Counter(arrays.diagnosis) == {0: 80, 1: 80, 2: 40}
    lesion = arrays.masks.float().mean((1, 2, 3))
    assert (lesion > 0).all() and (lesion < 1).all()
    split = data.split()
    assert [len(split[k]) for k in ("train", "val", "test")] == [100, 50, 50]
    label = dict(zip(arrays.ids, arrays.diagnosis))
    assert collections.Counter(label[c] for c in split["test"]) == {0: 20, 1: 20, 2: 10}
    again = PH2(ph2_root, image_size=32, cache_dir=tmp_path)
    assert again.split() == split and again.cache_hit is True
    assert torch.equal(again.arrays.images, arrays.images)
    json.dumps(split)  # what split.json holds is plain JSON
