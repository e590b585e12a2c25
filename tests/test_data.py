import json

import numpy as np
import pytest
import torch
from PIL import Image

from ovaal_backend.engine.data import (
    Augmentation,
    DatasetError,
    SegmentationFolder,
    make_batch,
    read_class_info,
    resize_images,
    sample_at_points,
)
from tests.helpers.synthetic import CLASSES, make_dataset


def _marker_image(height, width, points):
    """An image whose pixel values encode the row/col of the marked points, so we can find them after augmenting."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for r, c, _ in points:
        image[r, c] = 255
    return image


@pytest.mark.parametrize("seed", range(5))
def test_points_follow_the_image_through_augmentation(seed):
    height, width = 40, 60
    points = np.array([[5, 7, 1], [20, 30, 2], [39, 59, 0], [0, 0, 1]])
    images = resize_images([_marker_image(height, width, points)], height, width)
    gen = torch.Generator().manual_seed(seed)
    augment = Augmentation(scale_min=1.0, scale_max=1.0, flip=True, color_jitter=0.0)
    batch, packed, _, _ = make_batch(images, [points], [(height, width)], [0], augment, gen)
    assert len(packed) == len(points), "no click lost or duplicated without scaling"
    for _, y, x, _label in packed.tolist():
        assert batch[0, 0, round(y), round(x)] == 255
    assert sorted(packed[:, 3].tolist()) == sorted(points[:, 2].tolist())


def test_points_map_through_resize_and_scale():
    height, width = 40, 60
    points = np.array([[10, 15, 1], [30, 45, 2]])
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[8:13, 13:18] = 255
    image[28:33, 43:48] = 255
    images = resize_images([image], 20, 30)  # training at half size
    gen = torch.Generator().manual_seed(0)
    augment = Augmentation(scale_min=1.5, scale_max=1.5, flip=False, color_jitter=0.0)
    batch, packed, _, _ = make_batch(images, [points], [(height, width)], [0], augment, gen)
    for _, y, x, _ in packed.tolist():
        assert batch[0, 0, round(y), round(x)] > 128


def test_batch_marks_crop_padding_and_keeps_an_unjittered_view():
    height, width = 40, 60
    images = resize_images([np.full((height, width, 3), 200, dtype=np.uint8)], height, width)
    gen = torch.Generator().manual_seed(0)
    augment = Augmentation(scale_min=0.5, scale_max=0.5, flip=True, color_jitter=0.5)
    batch = make_batch(images, [np.zeros((0, 3), dtype=np.int64)], [(height, width)], [0], augment, gen)
    assert batch.valid[0].sum() == 20 * 30, "a half-size image covers a quarter of the canvas"
    assert torch.all(batch.weak[0][:, batch.valid[0]] == 200), "the weak view has no colour jitter"
    assert torch.all(batch.weak[0][:, ~batch.valid[0]] == 0)
    assert not torch.allclose(batch.images[0][:, batch.valid[0]], batch.weak[0][:, batch.valid[0]])


def test_sample_at_points_reads_exact_pixels():
    logits = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    points = torch.tensor([[0, 1, 2, 0], [1, 3, 4, 1], [0, 0, 0, 2]], dtype=torch.float32)
    sampled = sample_at_points(logits, points)
    assert torch.allclose(sampled[0], logits[0, :, 1, 2])
    assert torch.allclose(sampled[1], logits[1, :, 3, 4])
    assert torch.allclose(sampled[2], logits[0, :, 0, 0])


def test_folder_reads_images_labels_and_classes(tmp_path):
    root = make_dataset(tmp_path / "train", 3)
    folder = SegmentationFolder(root)
    assert len(folder) == 3 and folder.info.classes == tuple(CLASSES)
    label = folder.load_label(0)
    assert label.dtype == np.int64 and (label[:, :2] == -1).all(), "void maps to IGNORE_INDEX"
    assert folder.load_image(0).shape == (48, 64, 3)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="images/"):
        SegmentationFolder(tmp_path)
    root = make_dataset(tmp_path / "d", 2)
    next((root / "labels").iterdir()).unlink()
    with pytest.raises(DatasetError, match="no label"):
        SegmentationFolder(root)
    with pytest.raises(DatasetError, match="classes.json"):
        read_class_info(tmp_path / "nowhere" / "x")


def _tiny_folder(root, labels, ignore_index=None):
    """A dataset folder with one 2x3 image per label map and a classes.json with two classes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(np.array(label, dtype=np.uint8)).save(root / "labels" / f"im{i}.png")
    meta = {"classes": ["a", "b"]} if ignore_index is None else {"classes": ["a", "b"], "ignore_index": ignore_index}
    (root / "classes.json").write_text(json.dumps(meta))
    return SegmentationFolder(root)


def test_label_void_value_comes_from_classes_json(tmp_path):
    folder = _tiny_folder(tmp_path / "camvid_like", [[[0, 1, 11], [11, 1, 0]]], ignore_index=11)
    np.testing.assert_array_equal(folder.load_label(0), [[0, 1, -1], [-1, 1, 0]])
    default = _tiny_folder(tmp_path / "default", [[[0, 255, 1], [1, 1, 255]]])
    assert default.info.ignore_index == 255
    np.testing.assert_array_equal(default.load_label(0), [[0, -1, 1], [1, 1, -1]])


@pytest.mark.parametrize("ignore_index,bad", [(11, 255), (11, 2), (255, 11)])
def test_label_value_neither_class_nor_void_is_an_error(tmp_path, ignore_index, bad):
    folder = _tiny_folder(tmp_path / "d", [[[0, 1, 0], [1, 0, 1]], [[0, 1, ignore_index], [bad, 0, 1]]],
                          ignore_index=ignore_index)
    assert folder.load_label(0).tolist() == [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(DatasetError, match=rf"im1\.png: label value\(s\) \[{bad}\] .*void value {ignore_index}"):
        folder.load_label(1)


def test_void_value_that_is_a_class_index_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="ignore_index 1 is the index of class 'b'"):
        _tiny_folder(tmp_path / "d", [[[0, 1, 0]]], ignore_index=1)
