"""Damaged datasets: each problem names the file; check_data lists every problem at once (data/, check_data.py)."""
import numpy as np
import pytest
from skimage import io as skio

from segbench import check_data
from tests.conftest import write_case


# -- dataset integrity on a damaged copy of a small PH2-layout dataset ----------
def damage(root, kind):
    images = root / "PH2 Dataset images"
    if kind == "truncated":
        path = images / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.png"
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "corrupt":
        path = images / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.png"
        path.write_bytes(b"this is not an image")
    elif kind == "mask_size":
        path = images / "IMD002" / "IMD002_lesion" / "IMD002_lesion.png"
        skio.imsave(path, np.zeros((20, 20), np.uint8), check_contrast=False)
    elif kind == "mask_levels":
        path = images / "IMD002" / "IMD002_lesion" / "IMD002_lesion.png"
        skio.imsave(path, (np.arange(40 * 48) % 3).reshape(40, 48).astype(np.uint8) * 100, check_contrast=False)
    elif kind == "duplicate":
        write_case(images, "imd002")
        path = images / "imd002"
    elif kind == "empty_case":
        path = images / "IMD099"
        path.mkdir()
    return path


DAMAGE = {
    "truncated": "cannot read image file",
    "corrupt": "cannot read image file",
    "mask_size": "must match",
    "mask_levels": "distinct values",
    "duplicate": "duplicate case id",
    "empty_case": "has no image",
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_dataset_errors_name_the_file(fake_ph2, kind):
    from segbench.data import PH2, DataError

    path = damage(fake_ph2, kind)
    with pytest.raises(DataError, match=DAMAGE[kind]) as err:
        PH2(fake_ph2, image_size=16, cache_dir=None).arrays
    assert str(path) in str(err.value)


def test_check_data_reports_every_problem_at_once(fake_ph2, capsys):
    for kind in ("truncated", "empty_case", "duplicate"):
        damage(fake_ph2, kind)
    mask = fake_ph2 / "PH2 Dataset images" / "IMD005" / "IMD005_lesion" / "IMD005_lesion.png"
    skio.imsave(mask, np.zeros((20, 20), np.uint8), check_contrast=False)
    code = check_data.main(["dataset=ph2", f"dataset.root={fake_ph2}", "split.sizes=[3,3,3]"])
    out = capsys.readouterr().out
    assert code == 1 and "5 problem(s)" in out
    for text in ("cannot read image file", "has no image", "duplicate case id", "IMD005_lesion.png",
                 "= 9 exceed the 7 readable cases"):
        assert text in out, text


def test_check_data_ok_and_bad_root(fake_ph2, tmp_path, capsys):
    assert check_data.main(["dataset=ph2", f"dataset.root={fake_ph2}", "split.sizes=[3,3,3]"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    assert check_data.main(["dataset=ph2", f"dataset.root={tmp_path / 'missing'}"]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert check_data.main(["dataset=synthetic"]) == 0


