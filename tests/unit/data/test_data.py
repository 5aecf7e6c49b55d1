
import numpy as np
import pytest
import torch
from skimage import io as skio

from segbench.data import PH2, DataError, SyntheticDermoscopy
from segbench.engine import Normalizer
from segbench.splits import Holdout
from tests.conftest import write_case


# -- synthetic ---------------------------------------------------------------
def test_synthetic_is_deterministic():
    a = SyntheticDermoscopy(num_cases=6, image_size=32).arrays
    b = SyntheticDermoscopy(num_cases=6, image_size=32).arrays
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    c = SyntheticDermoscopy(num_cases=6, image_size=32, seed=1).arrays
    assert not torch.equal(a.images, c.images)
    # case i does not depend on how many cases are generated
    d = SyntheticDermoscopy(num_cases=3, image_size=32).arrays
    assert torch.equal(d.images, a.images[:3])


def test_synthetic_shapes_and_masks():
    data = SyntheticDermoscopy(num_cases=10, image_size=48).arrays
    assert data.images.shape == (10, 3, 48, 48) and data.images.dtype == torch.uint8
    assert data.masks.shape == (10, 1, 48, 48) and set(data.masks.unique().tolist()) == {0, 1}
    fraction = data.masks.float().mean((1, 2, 3))
    assert (fraction > 0.01).all() and (fraction < 0.9).all()  # every case has a lesion and background


# -- PH2 reader on a small fake tree -----------------------------------------
def test_fake_ph2_layout(fake_ph2, tmp_path):
    data = PH2(fake_ph2, image_size=16, cache_dir=None)
    arrays = data.arrays
    assert arrays.ids == [f"IMD{i:03d}" for i in range(1, 10)]  # .DS_Store and notes/ ignored
    assert arrays.images.shape == (9, 3, 16, 16) and arrays.masks.shape == (9, 1, 16, 16)
    assert set(arrays.masks.unique().tolist()) == {0, 1}
    assert arrays.groups == [("common_nevus", "atypical_nevus", "melanoma")[i % 3] for i in range(9)]
    # the images folder itself is an accepted root, with the same cases
    inner = PH2(fake_ph2 / "PH2 Dataset images", image_size=16, cache_dir=None)
    assert inner.ids == data.ids and inner.groups == data.groups


def test_bool_and_rgb_masks_decode_alike(tmp_path):
    images = tmp_path / "imgs"
    write_case(images, "IMD001", mask_values=(0, 255))
    write_case(images, "IMD002", mask_values=(0, 1))
    folder = write_case(images, "IMD003", mask=False)
    (folder / "IMD003_lesion").mkdir()
    m = np.zeros((40, 48, 3), np.uint8)
    m[10:30, 12:36] = 255
    skio.imsave(folder / "IMD003_lesion" / "IMD003_lesion.png", m, check_contrast=False)
    arrays = PH2(images, image_size=40, cache_dir=None).arrays
    assert torch.equal(arrays.masks[0], arrays.masks[1]) and torch.equal(arrays.masks[1], arrays.masks[2])


def test_ph2_cache_hit(fake_ph2, tmp_path):
    first = PH2(fake_ph2, image_size=16, cache_dir=tmp_path / "cache")
    a = first.arrays
    assert first.cache_hit is False and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = PH2(fake_ph2, image_size=16, cache_dir=tmp_path / "cache")
    b = second.arrays
    assert second.cache_hit is True and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    # same layout too, so that the normaliser (and everything after it) computes bit-identically
    assert a.images.stride() == b.images.stride() and a.images.is_contiguous()
    assert Normalizer.fit(a.images).mean == Normalizer.fit(b.images).mean  # lists, as checkpoints store them
    other_size = PH2(fake_ph2, image_size=24, cache_dir=tmp_path / "cache")
    other_size.arrays
    assert other_size.cache_hit is False


def test_damaged_cache_is_rebuilt_with_a_warning(fake_ph2, tmp_path, caplog):
    """The cache is derived data: a truncated file, other arrays or a missing key is rebuilt, not fatal."""
    import numpy as np_

    reference = PH2(fake_ph2, image_size=16, cache_dir=tmp_path).arrays
    (cache,) = tmp_path.glob("*.npz")
    damages = {
        "truncated": lambda: cache.write_bytes(cache.read_bytes()[:100]),
        "wrong arrays": lambda: np_.savez(cache, images=np_.zeros((2, 3, 16, 16), np_.uint8),
                                          masks=np_.zeros((2, 1, 16, 16), np_.uint8)),
        "wrong key": lambda: np_.savez(cache, pictures=np_.zeros(3)),
    }
    for name, damage in damages.items():
        damage()
        caplog.clear()
        data = PH2(fake_ph2, image_size=16, cache_dir=tmp_path)
        assert torch.equal(data.arrays.images, reference.images) and torch.equal(data.arrays.masks, reference.masks)
        assert data.cache_hit is False, name
        assert f"the cache file '{cache}' cannot be used" in caplog.text and "rebuilding it" in caplog.text, name
        again = PH2(fake_ph2, image_size=16, cache_dir=tmp_path)
        assert torch.equal(again.arrays.images, reference.images) and again.cache_hit is True  # rebuilt


# -- bad input ---------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        PH2(missing, image_size=16).arrays
    assert str(missing) in str(err.value) and "dataset=synthetic" in str(err.value)
    assert "IMD002_Dermoscopic_Image" in str(err.value)  # shows the expected layout


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match="no PH2 case folders found") as err:
        PH2(tmp_path, image_size=16).arrays
    assert "dataset=synthetic" in str(err.value)


def test_case_without_mask_names_it(fake_ph2):
    write_case(fake_ph2 / "PH2 Dataset images", "IMD099", mask=False)
    with pytest.raises(DataError, match="case 'IMD099' has no lesion mask") as err:
        PH2(fake_ph2, image_size=16).arrays
    assert "IMD099_lesion" in str(err.value)


def test_unreadable_image_names_the_file(fake_ph2):
    bad = fake_ph2 / "PH2 Dataset images" / "IMD004" / "IMD004_Dermoscopic_Image" / "IMD004.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError, match="cannot read image file") as err:
        PH2(fake_ph2, image_size=16, cache_dir=None).arrays
    assert str(bad) in str(err.value)


def test_mask_of_wrong_size_names_the_file(fake_ph2):
    mask = fake_ph2 / "PH2 Dataset images" / "IMD005" / "IMD005_lesion" / "IMD005_lesion.png"
    skio.imsave(mask, np.zeros((10, 10), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match="must match") as err:
        PH2(fake_ph2, image_size=16, cache_dir=None).arrays
    assert str(mask) in str(err.value)


def test_split_too_large_for_ph2(fake_ph2):
    data = PH2(fake_ph2, image_size=16, cache_dir=None)
    with pytest.raises(ValueError, match="exceed the 9 cases"):
        Holdout([5, 3, 3]).make(data.ids, data.groups)


