"""dataset=folder and its presets (isic2018, kvasir_seg), split files, and check_data on folders."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench import check_data
from segbench.build import build
from segbench.data import DataError, Folder
from segbench.splits import FileSplit, Holdout
from segbench.train import run
from tests.conftest import TINY, compose_cfg

H, W = 24, 32
LESION = (slice(5, 17), slice(7, 23))  # not JPEG-block aligned: a JPEG mask rings at its edges


def image(seed: int, mode: str = "RGB") -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return Image.fromarray(rgb).convert(mode)


def mask(values=(0, 255)) -> np.ndarray:
    m = np.full((H, W), values[0], np.uint8)
    m[LESION] = values[1]
    return m


def isic_tree(root: Path, n: int = 8) -> Path:
    """The ISIC 2018 layout: JPEG images, PNG 0/255 masks named <stem>_segmentation.png."""
    images, masks = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    images.mkdir(parents=True), masks.mkdir()
    for i in range(n):
        image(i).save(images / f"ISIC_{i:07d}.jpg")
        Image.fromarray(mask()).save(masks / f"ISIC_{i:07d}_segmentation.png")
    (images / "LICENSE.txt").write_text("not an image")
    return root


def kvasir_tree(root: Path, n: int = 4) -> Path:
    """The Kvasir-SEG layout: images/ and masks/ with the same names, masks as lossy JPEGs."""
    (root / "images").mkdir(parents=True), (root / "masks").mkdir()
    for i in range(n):
        image(i).save(root / "images" / f"cju{i}.jpg")
        Image.fromarray(mask()).save(root / "masks" / f"cju{i}.jpg", quality=75)
    return root


def folder(root, **kw) -> Folder:
    return Folder(str(root), image_size=16, cache_dir=None, **kw)


def test_presets_read_their_layouts(tmp_path):
    isic = build(compose_cfg(["dataset=isic2018", f"dataset.root={isic_tree(tmp_path / 'isic')}",
                              f"cache_dir={tmp_path}", "dataset.image_size=16"]).dataset, "dataset")
    assert isic.ids == [f"ISIC_{i:07d}" for i in range(8)] and isic.arrays.masks.shape == (8, 1, 16, 16)
    kvasir = build(compose_cfg(["dataset=kvasir_seg", f"dataset.root={kvasir_tree(tmp_path / 'kv')}",
                                f"cache_dir={tmp_path}"]).dataset,
                   "dataset")
    assert kvasir.ids == ["cju0", "cju1", "cju2", "cju3"]
    assert len(np.unique(np.asarray(Image.open(tmp_path / "kv/masks/cju0.jpg")))) > 2  # lossy, really
    expected = mask((0, 1)).astype(bool)
    for m in kvasir.original_masks(kvasir.ids):  # thresholded at half range: the drawn lesion exactly
        assert m.dtype == bool and np.array_equal(m, expected)


def test_image_modes_and_mask_encodings_decode_alike(tmp_path):
    (tmp_path / "img").mkdir(), (tmp_path / "lab").mkdir()
    image(0, "L").save(tmp_path / "img/gray.png")
    image(1, "RGBA").save(tmp_path / "img/rgba.png")
    image(2).save(tmp_path / "img/rgb.bmp")
    image(3).save(tmp_path / "img/rgb16.tif")
    Image.fromarray(mask((0, 1))).save(tmp_path / "lab/gray_mask.png")
    Image.fromarray(mask()).save(tmp_path / "lab/rgba_mask.png")
    Image.fromarray(mask((0, 1)).astype(bool)).save(tmp_path / "lab/rgb_mask.png")  # 1-bit PNG
    Image.fromarray(np.stack([mask()] * 3, -1)).save(tmp_path / "lab/rgb16_mask.png")  # 3-channel 0/255
    ds = folder(tmp_path, images="img", masks="lab", mask_pattern="{stem}_mask.png")
    assert ds.check() == ([], 4)
    data = ds.arrays
    assert data.ids == ["gray", "rgb", "rgb16", "rgba"] and data.images.shape == (4, 3, 16, 16)
    gray = data.images[0]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale made 3-channel
    assert all((m == data.masks[0]).all() for m in data.masks) and set(data.masks.unique().tolist()) == {0, 1}


def test_images_and_masks_in_one_folder(tmp_path):
    for i in range(3):
        image(i).save(tmp_path / f"c{i}.png")
        Image.fromarray(mask()).save(tmp_path / f"c{i}_mask.png")
    ds = folder(tmp_path, images=".", masks=".", mask_pattern="{stem}_mask.png")
    assert ds.ids == ["c0", "c1", "c2"]


def test_multiclass_masks_are_indices_and_checked(tmp_path):
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    classes = mask((0, 1))
    classes[:4] = 2
    for i in range(3):
        image(i).save(tmp_path / f"images/c{i}.png")
        pal = Image.fromarray(classes, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # colours differ from the indices
        pal.save(tmp_path / f"masks/c{i}.png")
    ds = folder(tmp_path, num_classes=3)
    assert set(ds.arrays.masks.unique().tolist()) == {0, 1, 2}
    assert np.array_equal(ds.original_masks(["c1"])[0], classes)
    problems, readable = folder(tmp_path, num_classes=4).check()
    assert problems == [] and readable == 3
    bad = classes.copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(tmp_path / "masks/c1.png")
    problems, readable = folder(tmp_path, num_classes=3).check()
    assert readable == 2 and len(problems) == 1
    assert "c1.png" in problems[0] and "values 7 outside 0..2" in problems[0]
    with pytest.raises(DataError, match="num_classes=2: a binary dataset is num_classes=1"):
        folder(tmp_path, num_classes=2)


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    root = isic_tree(tmp_path, n=9)
    images, masks = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(masks / "ISIC_0000000_segmentation.png")  # wrong size
    three = mask()
    three[:, :4] = 128
    Image.fromarray(three).save(masks / "ISIC_0000001_segmentation.png")  # 0, 128, 255: three values
    (images / "ISIC_0000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    (masks / "ISIC_0000003_segmentation.png").unlink()  # image without mask
    Image.fromarray(mask()).save(masks / "ISIC_0000099_segmentation.png")  # mask without image
    args = ["dataset=isic2018", f"dataset.root={root}", "dataset.image_size=16", f"cache_dir={tmp_path}"]
    assert check_data.main(args) == 1
    out = capsys.readouterr().out
    assert "5 problem(s)" in out
    for expected in ("ISIC_0000000_segmentation.png' is 32x26 but its image 'ISIC_0000000.jpg' is 32x24",
                     "ISIC_0000001_segmentation.png' has 3 distinct values (0, 128, 255)",
                     "cannot read image file", "ISIC_0000002.jpg",
                     "ISIC_0000003.jpg' has no mask: expected 'ISIC_0000003_segmentation.png'",
                     "ISIC_0000099_segmentation.png' has no image"):
        assert expected in out, expected
    with pytest.raises(DataError, match=r"\(and 1 more problems; segbench check-data lists them\)"):
        build(compose_cfg(args).dataset, "dataset").arrays


@pytest.mark.parametrize("case", ["no_match", "empty", "no_root", "no_masks_folder"])
def test_layout_errors_name_the_folder_and_an_example(tmp_path, case):
    root = isic_tree(tmp_path / "isic", n=2)
    kw = dict(images="ISIC2018_Task1-2_Training_Input", masks="ISIC2018_Task1_Training_GroundTruth",
              mask_pattern="{stem}_segmentation.png")
    if case == "no_match":
        kw["mask_pattern"] = "{stem}_Segmentation.PNG"  # case-insensitive: still matches, so move the masks
        for p in (root / kw["masks"]).iterdir():
            p.rename(p.with_name(p.name.replace("ISIC_", "isic-")))
        match = (r"no image in .* has a mask .*: e\.g\. image 'ISIC_0000000\.jpg' looks for "
                 r"'ISIC_0000000_Segmentation\.PNG', but the masks are named like 'isic-0000000_segmentation\.png'")
    elif case == "empty":
        root = tmp_path / "empty"
        (root / "images").mkdir(parents=True), (root / "masks").mkdir()
        kw = {}
        match = r"the images folder '.*images' holds no image files matching dataset.image_pattern='\*'"
    elif case == "no_root":
        root = tmp_path / "nowhere"
        match = r"dataset.root '.*nowhere' does not exist or is not a folder"
    else:
        kw["masks"] = "GroundTruth"
        match = r"dataset.masks: '.*GroundTruth' does not exist or is not a folder"
    with pytest.raises(DataError, match=match):
        folder(root, **kw).arrays


def test_groups_csv_stratifies_the_split(tmp_path):
    root = isic_tree(tmp_path, n=8)
    ids = [f"ISIC_{i:07d}" for i in range(8)]
    groups = "".join(f"{c},{'a' if i < 4 else 'b'}\n" for i, c in enumerate(ids))
    (root / "groups.csv").write_text("id,group\n" + groups)
    cfg = compose_cfg(
        [
            "dataset=isic2018",
            f"dataset.root={root}",
            "dataset.groups=groups.csv",
            f"cache_dir={tmp_path}",
            "split.sizes=[4,2,2]",
        ]
    )
    ds = build(cfg.dataset, "dataset")
    split = Holdout([4, 2, 2]).make(ds.ids, ds.groups, ds.group_order, ds.group_key)
    assert split["stratified_by"] == "group"
    for part in ("train", "val", "test"):  # each part holds both groups in proportion
        assert sorted(ds.groups[ds.ids.index(c)] for c in split[part]) == sorted("ab" * (len(split[part]) // 2))
    (root / "groups.csv").write_text("id,group\nISIC_0000000,a\n")
    with pytest.raises(DataError, match=r"has no group for 7 case\(s\), e.g. ISIC_0000001"):
        folder(
            root,
            images=cfg.dataset.images,
            masks=cfg.dataset.masks,
            mask_pattern=cfg.dataset.mask_pattern,
            groups="groups.csv",
        ).arrays


def test_split_file_csv_json_and_errors(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    csv_file = tmp_path / "split.csv"
    csv_file.write_text("id,part\nc0,train\nc1,train\nc2,train\nc3,val\nc4,test\n")
    split = FileSplit(str(csv_file)).make(ids)
    assert (split["train"], split["val"], split["test"]) == (["c0", "c1", "c2"], ["c3"], ["c4"])
    json_file = tmp_path / "split.json"
    json_file.write_text(json.dumps({**{k: split[k] for k in ("train", "val", "test")}, "digest": "ignored"}))
    assert FileSplit(str(json_file)).make(ids)["digest"] == split["digest"]
    errors = {
        "id,part\nc0,train\nc0,val\nc4,test\n": "case 'c0' is in 'train' and in 'val'",
        "id,part\nc0,train\nzz,val\nc4,test\n": r"names 1 case\(s\) the dataset does not have, e.g. zz",
        "id,part\nc0,train\nc1,valid\n": "line 3: part 'valid'; expected one of train, val, test",
        "name,part\nc0,train\n": r"columns \['name', 'part'\]; expected id,part",
        "id,part\nc0,train\nc1,test\n": "names no val case",
    }
    for text, match in errors.items():
        csv_file.write_text(text)
        with pytest.raises(DataError, match=match):
            FileSplit(str(csv_file)).make(ids)
    with pytest.raises(DataError, match="is not a file"):
        FileSplit(str(tmp_path / "missing.csv")).make(ids)


def test_check_data_checks_a_split_file_against_the_cases(tmp_path, capsys):
    root = isic_tree(tmp_path / "isic", n=4)
    split = tmp_path / "split.csv"
    split.write_text("id,part\nISIC_0000000,train\nISIC_0000001,val\nISIC_0000009,test\n")
    args = ["dataset=isic2018", f"dataset.root={root}", "split=file", f"split.path={split}", f"cache_dir={tmp_path}"]
    assert check_data.main(args) == 1
    assert "names 1 case(s) the dataset does not have, e.g. ISIC_0000009" in capsys.readouterr().out
    split.write_text("id,part\nISIC_0000000,train\nISIC_0000001,val\nISIC_0000003,test\n")
    assert check_data.main(args) == 0


def test_a_run_on_a_folder_dataset_with_a_split_file(tmp_path):
    root = isic_tree(tmp_path / "isic", n=8)
    (tmp_path / "split.csv").write_text(
        "id,part\n"
        + "".join(f"ISIC_{i:07d},{p}\n" for i, p in enumerate("train train train train val val test test".split()))
    )
    tiny = [a for a in TINY if not a.startswith("dataset")]
    cfg = compose_cfg(
        [
            *tiny,
            "dataset=isic2018",
            f"dataset.root={root}",
            "dataset.image_size=16",
            f"cache_dir={tmp_path}",
            "split=file",
            f"split.path={tmp_path / 'split.csv'}",
            "eval.resolution=original",
            f"output_dir={tmp_path / 'run'}",
            "trainer.epochs=1",
        ]
    )
    metrics = run(cfg)
    assert metrics["status"] == "done" and metrics["image_size"] == 16
    saved = json.loads((tmp_path / "run/split.json").read_text())
    assert saved["strategy"] == "file" and saved["test"] == ["ISIC_0000006", "ISIC_0000007"]


def test_mandatory_keys_are_named_before_any_work():
    from segbench.config import validate
    from segbench.errors import UserError

    with pytest.raises(
        UserError,
        match=r"dataset.root, split.path must be set \(the config says \?\?\?\); give "
        r"dataset.root=\.\.\. split.path=\.\.\. on the command line",
    ):
        validate(compose_cfg(["dataset=folder", "split=file"]))


def test_subjects_csv_is_read_checked_and_optional_for_the_isic_metadata(tmp_path):
    root = isic_tree(tmp_path, n=4)
    ids = [f"ISIC_{i:07d}" for i in range(4)]
    layout = {"images": "ISIC2018_Task1-2_Training_Input", "masks": "ISIC2018_Task1_Training_GroundTruth",
              "mask_pattern": "{stem}_segmentation.png"}
    (root / "subjects.csv").write_text("id,subject\n" + "".join(f"{c},P{i // 2}\n" for i, c in enumerate(ids)))
    assert folder(root, **layout, subjects="subjects.csv").read_subjects(ids) == ["P0", "P0", "P1", "P1"]
    assert folder(root, **layout).read_subjects(ids) is None
    (root / "subjects.csv").write_text("id,subject\nISIC_0000000,P0\n")
    with pytest.raises(DataError, match=r"subjects.csv' has no subject for 3 case\(s\), e.g. ISIC_0000001"):
        folder(root, **layout, subjects="subjects.csv").read_subjects(ids)
    with pytest.raises(DataError, match=r"dataset.subjects: '.*nothere.csv' is not a file; expected a CSV with "
                                        r"columns id,subject"):
        folder(root, **layout, subjects="nothere.csv").read_subjects(ids)
    # the ISIC preset: lesion ids from the archive's metadata.csv when it is there; an image without one alone
    cfg = compose_cfg(["dataset=isic2018", f"dataset.root={root}", f"cache_dir={tmp_path}"])
    assert build(cfg.dataset, "dataset").read_subjects(ids) is None
    (root / "metadata.csv").write_text("isic_id,attribution,lesion_id\nISIC_0000000,x,IL_1\nISIC_0000001,x,IL_1\n"
                                       "ISIC_0000002,x,\n")
    assert build(cfg.dataset, "dataset").read_subjects(ids) == ["IL_1", "IL_1", "ISIC_0000002", "ISIC_0000003"]
    assert folder(root, **layout, subjects="subjects.csv", subjects_metadata="metadata.csv").read_subjects(
        ids[:1]) == ["P0"]  # the user's subjects first
    (root / "metadata.csv").write_text("image,lesion\nISIC_0000000,IL_1\n")
    with pytest.raises(DataError, match=r"dataset.subjects_metadata: '.*metadata.csv' has columns \['image', "
                                        r"'lesion'\]; expected a CSV with columns isic_id,lesion_id"):
        build(cfg.dataset, "dataset").read_subjects(ids)


def test_a_kfold_study_by_subject_never_puts_a_subject_in_two_parts_of_any_fold(tmp_path):
    """Three folds of a folder dataset whose 12 images are of 5 subjects, and their report."""
    from segbench.report import build_report
    from segbench.runs import RunDir

    root = isic_tree(tmp_path / "isic", n=12)
    subject = {f"ISIC_{i:07d}": f"P{i % 5}" for i in range(12)}
    (root / "subjects.csv").write_text("id,subject\n" + "".join(f"{c},{s}\n" for c, s in subject.items()))
    tiny = [a for a in TINY if not a.startswith(("dataset", "split"))]
    sweep, tests = tmp_path / "sweep", []
    for fold in range(3):
        run(compose_cfg([*tiny, "dataset=isic2018", f"dataset.root={root}", "dataset.subjects=subjects.csv",
                         "dataset.image_size=32", f"cache_dir={tmp_path}", "split=kfold", "split.k=3",
                         f"split.fold={fold}", "split.val_size=2", "trainer.epochs=1",
                         f"output_dir={sweep / f'fold{fold}'}"]))
        saved = json.loads((sweep / f"fold{fold}" / "split.json").read_text())
        assert saved["split_by"] == "subject" and saved["subjects"] == subject
        parts = {part: {subject[c] for c in saved[part]} for part in ("train", "val", "test")}
        assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
        tests.append(saved["test"])
    assert sorted(c for test in tests for c in test) == sorted(subject)  # every case a test case once
    build_report([RunDir(sweep / f"fold{f}") for f in range(3)], sweep)
    summary = (sweep / "summary.md").read_text()
    assert "All runs use one 3-fold cross-validation by subject (split seed 0) (3 folds run)." in summary
    assert "Split by subject (dataset.subjects): no subject has cases in two parts" in summary
