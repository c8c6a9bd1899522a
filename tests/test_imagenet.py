"""ImageNet from directories that TFDS's own `imagenet2012` builder prepared, in both file
formats: training and evaluation end to end, identical eval images, deterministic and
resumable training streams, worker processes, reduced-size decoding, helpful errors."""

import hashlib
import io
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lip_jax import data
from lip_jax.data import imagenet, imagenet_fake, pipeline
from lip_jax.train import loop
from lip_jax.train.config import load_config

pytest.importorskip("tensorflow", reason="building imagenet2012 with TFDS needs the [tf] extra")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments/configs/imagenet_lip_resnet50.py")
FORMATS = ("array_record", "tfrecord")
NUM_TRAIN, NUM_VAL = 12, 7  # 3 classes x 4; no batch size below divides 7

# Prepended to a script: TensorFlow hidden from imports as on a machine without the [tf]
# extra (`importlib.util.find_spec("tensorflow")` is None, as TFDS and etils check).
WITHOUT_TENSORFLOW = """
import sys

class HideTensorflow:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "tensorflow":
            return self.finder.find_spec(name, path, target)

sys.meta_path[:] = [HideTensorflow(finder) for finder in sys.meta_path]
"""


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory):
    """{file_format: TFDS data_dir}, built once per pytest worker (each has its own tmp)."""
    manual = imagenet_fake.write_manual_dir(tmp_path_factory.mktemp("manual"), num_classes=3,
                                            per_class=4, num_val=NUM_VAL)
    return {f: imagenet_fake.build(tmp_path_factory.mktemp(f), manual, f) for f in FORMATS}


def _config(data_dir, data_format, **fields):
    values = dict(data_dir=str(data_dir), data_format=data_format, image_size=32,
                  batch_size=8, bn_group_size=4, eval_batch_size=16, num_threads=2, max_steps=2,
                  log_every_steps=1, checkpoint_every_secs=1e6,
                  model_kwargs={"width": 8, "logit_width": 8, "stage_sizes": (1, 1, 1, 1)})
    values.update(fields)
    return load_config(CONFIG, [f"--config.{k}={v!r}" for k, v in values.items()])


@pytest.mark.parametrize("data_format", FORMATS)
def test_paper_config_trains_and_evaluates_every_image_once(data_dirs, data_format, tmp_path):
    config = _config(data_dirs[data_format], data_format)
    result = loop.train_and_evaluate(config, tmp_path)
    assert result["step"] == 2 and result["eval_count"] == NUM_VAL
    assert np.isfinite(result["eval_loss"]) and 0 <= result["eval_top1"] <= 1


def _eval_examples(input_, global_batch, process_count):
    """(label, image digest) of every unmasked eval row of every process."""
    rows, shapes = [], set()
    for p in range(process_count):
        batches = list(input_.eval_batches(global_batch, p, process_count))
        shapes.add(len(batches))
        for batch in batches:
            for image, label, mask in zip(batch["image"], batch["label"], batch["mask"]):
                if mask:
                    rows.append((int(label), hashlib.sha1(image.tobytes()).hexdigest()))
    assert len(shapes) == 1, "processes disagree on the number of eval batches"
    return sorted(rows)


def test_both_formats_evaluate_identical_images_each_once(data_dirs):
    inputs = {f: data.input_pipeline(_config(data_dirs[f], f)) for f in FORMATS}
    reference = _eval_examples(inputs["array_record"], 16, 1)
    assert len(reference) == NUM_VAL and len({d for _, d in reference}) == NUM_VAL
    for data_format, input_ in inputs.items():
        for global_batch, process_count in ((16, 1), (2, 2), (6, 3), (3, 3), (8, 8)):
            assert _eval_examples(input_, global_batch, process_count) == reference, (
                data_format, global_batch, process_count)


@pytest.mark.parametrize("data_format", FORMATS)
def test_training_stream_is_reproducible_and_resumes_exactly(data_dirs, data_format):
    config = _config(data_dirs[data_format], data_format, batch_size=4)  # 3 steps an epoch
    input_ = data.input_pipeline(config)
    assert input_.num_train == NUM_TRAIN

    def take(start, count, process_index=0, process_count=1):
        batches = input_.train_batches(start, process_index, process_count)
        return [next(batches) for _ in range(count)]

    run = take(0, 7)
    assert all(b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
               for b in run)
    for got, want in zip(take(0, 7) + take(2, 5) + take(4, 1),
                         run + run[2:] + run[4:5]):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert not np.array_equal(run[0]["image"], run[3]["image"])  # epochs differ
    reseeded = data.input_pipeline(_config(data_dirs[data_format], data_format, batch_size=4,
                                           seed=1))
    assert not np.array_equal(next(reseeded.train_batches(0, 0, 1))["image"], run[0]["image"])
    shares = [take(1, 2, p, 2) for p in range(2)]
    assert all(b["image"].shape == (2, 32, 32, 3) for share in shares for b in share)
    np.testing.assert_array_equal(take(1, 2, 1, 2)[1]["image"], shares[1][1]["image"])


def test_worker_processes_give_the_batches_of_threads(data_dirs):
    config = _config(data_dirs["array_record"], "array_record", batch_size=4)
    threads = data.input_pipeline(config).train_batches(2, 0, 1)
    workers = data.input_pipeline(_config(data_dirs["array_record"], "array_record",
                                          batch_size=4, num_workers=2)).train_batches(2, 0, 1)
    try:
        for _ in range(3):
            np.testing.assert_array_equal(next(threads)["image"], next(workers)["image"])
    finally:
        workers.close()


def _full_decode_crop(data_, box, size):
    from PIL import Image
    left, top, w, h = box
    image = Image.open(io.BytesIO(data_)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BILINEAR,
                                   box=(left, top, left + w, top + h)))


def test_jpeg_decoded_at_reduced_size_only_when_the_crop_allows():
    from PIL import Image
    data_ = imagenet_fake.jpeg(0, 400, 300)
    small_box = (150, 100, 100, 90)  # half size would leave 50 x 45 pixels < 64: full decode
    np.testing.assert_array_equal(
        np.asarray(imagenet.resized_crop(Image.open(io.BytesIO(data_)), small_box, 64)),
        _full_decode_crop(data_, small_box, 64))
    whole = (0, 0, 400, 300)  # decoded at 1/4 size (100 x 75): close to, not equal to, full
    reduced = np.asarray(imagenet.resized_crop(Image.open(io.BytesIO(data_)), whole, 64), float)
    difference = np.abs(reduced - _full_decode_crop(data_, whole, 64))
    assert 0 < difference.mean() < 2


def test_inception_crop_boxes_and_transform_shapes():
    rng = np.random.default_rng(0)
    for size in ((300, 200), (50, 400), (224, 224)):
        for _ in range(20):
            left, top, w, h = imagenet.inception_crop(*size, rng)
            assert 0 <= left and left + w <= size[0] and 0 <= top and top + h <= size[1]
    example = {"image": imagenet_fake.jpeg(0, 37, 90), "label": 3}
    assert imagenet.train_transform(64)(example, rng)["image"].shape == (64, 64, 3)
    assert imagenet.eval_transform(64)(example)["image"].shape == (64, 64, 3)


def test_prefetch_to_device_puts_batches_ahead_in_order():
    put = []

    def device_put(batch):
        put.append(batch)
        return jax.device_put(batch)

    batches = pipeline.prefetch_to_device(iter(range(5)), device_put, depth=2)
    assert int(next(batches)) == 0 and put == [0, 1]  # the next copy is already issued
    assert [int(b) for b in batches] == [1, 2, 3, 4]


def test_without_data_dir_says_so():
    with pytest.raises(FileNotFoundError, match="needs --config.data_dir"):
        data.input_pipeline(load_config(CONFIG, []))


@pytest.mark.parametrize("data_format", FORMATS)
def test_data_dir_without_the_dataset_says_how_to_prepare_it(tmp_path, data_format):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        data.input_pipeline(_config(tmp_path, data_format))
    message = str(error.value)
    assert f"no prepared imagenet2012 in --config.data_dir={tmp_path} (found: mnist)" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
    assert f"--file_format={data_format}" in message


@pytest.mark.parametrize("data_format", FORMATS)
def test_dataset_in_the_other_format_says_how_to_switch(data_dirs, data_format):
    other = FORMATS[1 - FORMATS.index(data_format)]
    version = Path(data_dirs[other]) / "imagenet2012" / "5.1.0"
    with pytest.raises(FileNotFoundError) as error:
        data.input_pipeline(_config(data_dirs[other], data_format))
    message = str(error.value)
    assert f"{version} holds imagenet2012 as {other}, not {data_format}" in message
    assert f"--config.data_format={other}" in message
    assert (f"tfds convert_format --dataset_version_dir={version} "
            f"--out_file_format={data_format}") in message


@pytest.mark.parametrize("data_format", FORMATS)
def test_a_truncated_shard_is_named_when_reading_fails(data_dirs, data_format, tmp_path):
    copy = shutil.copytree(data_dirs[data_format], tmp_path / "data")
    shard = next((copy / "imagenet2012" / "5.1.0").glob(f"imagenet2012-train.{data_format}-*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"reading the training split of imagenet2012 fails: "
                                         rf".*; damaged: {shard} holds \d+ records.*, "
                                         rf"dataset_info.json says {NUM_TRAIN}$"):
        loop.train_and_evaluate(_config(copy, data_format), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no step ran: the new directory is removed


def test_a_directory_holding_both_formats_reads_the_one_asked_for(data_dirs, tmp_path):
    both = shutil.copytree(data_dirs["array_record"], tmp_path / "both")
    for shard in (Path(data_dirs["tfrecord"]) / "imagenet2012" / "5.1.0").glob("*.tfrecord-*"):
        shutil.copy(shard, both / "imagenet2012" / "5.1.0")
    for data_format in FORMATS:
        batch = next(data.input_pipeline(_config(both, data_format)).train_batches(0, 0, 1))
        assert batch["image"].shape == (8, 32, 32, 3), data_format


def test_without_tensorflow_array_record_reads_and_tfrecord_says_what_to_install(data_dirs):
    script = WITHOUT_TENSORFLOW + f"""
from lip_jax import data
from lip_jax.train.config import load_config
config = load_config({CONFIG!r}, ["--config.data_dir={data_dirs['array_record']}",
                                  "--config.image_size=32", "--config.batch_size=4",
                                  "--config.bn_group_size=4"])
inputs = data.input_pipeline(config)
print("array_record", next(inputs.train_batches(0, 0, 1))["image"].shape)
config = load_config({CONFIG!r}, ["--config.data_dir={data_dirs['tfrecord']}",
                                  "--config.data_format='tfrecord'"])
try:
    data.input_pipeline(config)
except ImportError as error:
    print(error)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120,
                            capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    lines = output.stdout.splitlines()
    version = Path(data_dirs["tfrecord"]) / "imagenet2012" / "5.1.0"
    assert lines[0] == "array_record (4, 32, 32, 3)"
    assert lines[1].startswith(f"{version} holds imagenet2012 as tfrecord, read through "
                               "tf.data, and TensorFlow is not installed")
    assert "pip install 'lip-jax[tf]'" in lines[1] and "tfds convert_format" in lines[1]
    assert lines[2] == "tensorflow imported: False"


def test_bench_input_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", [
        "bench_input.py", "--images", "8", "--size", "64x48", "--batch", "4", "--batches", "1",
        "--cores", "1", "--data", str(tmp_path), "--out", str(out)])
    runpy.run_path(str(ROOT / "experiments" / "bench_input.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert {row["pipeline"] for row in result["rows"]} == {"grain threads", "grain processes",
                                                           "tf.data"}
    assert all(row["images_per_s"] > 0 and not row["images_per_cpu_s"] <= 0  # NaN: < 1 tick
               for row in result["rows"])
    assert result["host_to_device"]["images_per_s"] > 0
