import numpy as np
import pytest
import torch

from ovaal_backend.engine.data import (
    Augmentation,
    DatasetError,
    SegmentationFolder,
    make_batch,
    read_class_info,
    resize_images,
    sample_at_points,
)

from .synthetic import CLASSES, make_dataset


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
