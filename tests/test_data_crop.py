"""``config.data.image_size``: ADM's resize and centre crop (Dhariwal & Nichol 2021), checked
against closed forms (box halving of 2x2 blocks is exact; any symmetric, normalised resampling
kernel keeps a linear ramp linear), and through the pipeline on tfds mock ImageNet."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffjax import data
from diffjax.data.transforms import center_crop

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_box_halving_and_the_central_columns_are_exact():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)  # 32 x 48: halved exactly by the box
    # Short side 32 >= 2 * 16: halve to 16 x 24 (= small), no resize, keep columns 4..20.
    np.testing.assert_array_equal(center_crop(big, 16), small[:, 4:20])
    # A tall image crops rows, an odd margin leaves its extra row at the bottom.
    tall = rng.integers(0, 256, (21, 16, 1), dtype=np.uint8)
    np.testing.assert_array_equal(center_crop(tall, 16), tall[2:18])


def test_bicubic_resize_keeps_a_ramp_at_the_pixel_centres_then_crops_the_centre():
    # v(x) = 2x over 100 x 120: halved (short side 100 >= 2 * 40) to u(j) = 4j + 1 over
    # 50 x 60, resized by 0.8 to 40 x 48, columns 4..44 kept. Output column c is the resized
    # column k = c + 4, whose centre sits at source j = (k + 0.5) / 0.8 - 0.5.
    ramp = np.broadcast_to((2 * np.arange(120)).astype(np.uint8)[None, :, None], (100, 120, 3))
    out = center_crop(np.ascontiguousarray(ramp), 40).astype(np.float64)
    assert out.shape == (40, 40, 3)
    j = (np.arange(40) + 4 + 0.5) / 0.8 - 0.5
    expected = 4 * j + 1
    interior = (j >= 3) & (j <= 56)  # the kernel's support (2.5 source pixels) inside
    assert interior.sum() > 30
    np.testing.assert_allclose(out[20, interior, 0], expected[interior], atol=0.51)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])  # rows and channels alike
    np.testing.assert_array_equal(out[0], out[-1])


@pytest.mark.parametrize("value", [0, -3, "big", 2.5, True])
def test_bad_image_size_is_refused_naming_the_key(value, tmp_path):
    cfg = data.default_config()
    cfg.update(dataset="shapes", data_dir=str(tmp_path), batch_size=8)
    cfg.image_size = None
    with pytest.raises((ValueError, TypeError), match="image_size"):
        cfg.image_size = value
        data.validate_config(cfg)


def test_image_size_is_refused_for_points(tmp_path):
    cfg = data.default_config()
    cfg.update(dataset="moons", data_dir=str(tmp_path), batch_size=8, image_size=32)
    with pytest.raises(ValueError, match=r"config\.data\.image_size=32 .*points"):
        data.validate_config(cfg)


def test_images_of_every_size_train_at_image_size_through_the_pipeline(tmp_path):
    cfg = data.default_config()
    cfg.update(dataset="imagenet2012", data_dir=str(tmp_path), batch_size=4)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match=r"config\.data\.image_size"):
            data.validate_config(cfg)
        cfg.image_size = 24
        assert data.info_of(cfg).shape == (24, 24, 3)
        batch = next(data.make_iterator(cfg, seed=0))
        raw = tfds.data_source("imagenet2012", split="train", data_dir=str(tmp_path))
        sizes = {tuple(raw[i]["image"].shape) for i in range(8)}
    assert batch["x"].shape == (4, 24, 24, 3) and batch["x"].dtype == np.float32
    assert -1.0 <= batch["x"].min() < batch["x"].max() <= 1.0
    assert batch["cond"]["label"].shape == (4,)
    assert all(s[:2] != (24, 24) for s in sizes)  # the mock images really were resized
