"""`lip-jax convert`, `lip-jax models`, `lip-jax eval` and the importance-map script."""

import runpy
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lip_jax import cli, pretrained
from lip_jax.importance import importance_maps
from lip_jax.models import create_model

torch = pytest.importorskip("torch")
import torch_models  # noqa: E402
from train_helpers import make_fashion_mnist, tiny_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, logit_width=8)


@pytest.mark.parametrize("suffix", [".pth", ".npz", ".safetensors"])
def test_convert_command_writes_weights_that_load(tmp_path, suffix):
    net = torch_models.randomise(torch_models.ResNet((3, 4, 6, 3), True))
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    path = tmp_path / f"lip_resnet-50{suffix}"
    if suffix == ".pth":
        torch.save(net.state_dict(), path)
    elif suffix == ".npz":
        np.savez(path, **sd)
    else:
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    cli.main(["convert", str(path), "--model", "lip_resnet50", "--out", str(tmp_path / "out")])
    variables = pretrained.load_variables(tmp_path / "out", "lip_resnet50")
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer4_2"]["bn3"]["var"],
                                  sd["layer4.2.bn3.running_var"])
    with pytest.raises(ValueError, match="holds weights of 'lip_resnet50', not 'resnet50'"):
        pretrained.load_variables(tmp_path / "out", "resnet50")


def test_convert_rejects_unknown_files(tmp_path):
    with pytest.raises(ValueError, match=r"expected a .pth, .pt, .npz or .safetensors file"):
        cli.main(["convert", str(tmp_path / "weights.bin"), "--model", "lip_resnet50",
                  "--out", str(tmp_path)])


def test_models_command_lists_parameters_and_macs(capsys):
    cli.main(["models"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["lip_resnet50"][1] == "23.864" and rows["lip_resnet50"][3] == "23.9M"
    assert 4.9 < float(rows["lip_resnet50"][2]) < 5.5
    assert rows["lip_densenet121"][1] == "8.691"


def test_importance_maps_are_normalised():
    model = create_model("lip_resnet50", num_classes=10, **TINY)
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(1), images)
    # non-zero logit heads so that the maps are not uniform
    variables = jax.tree.map(lambda v: v + 0.1, variables)
    by_image = importance_maps(model, variables, images, "image")
    by_window = importance_maps(model, variables, images, "window")
    assert set(by_image) == set(by_window) == {
        "maxpool", "layer2_0/lip", "layer2_0/downsample/lip", "layer3_0/lip",
        "layer3_0/downsample/lip", "layer4_0/lip", "layer4_0/downsample/lip"}
    assert by_image["maxpool"].shape == (2, 32, 32) and by_image["layer2_0/lip"].shape == (
        2, 16, 16)
    for name, m in by_image.items():
        np.testing.assert_allclose(m.max(axis=(1, 2)), 1.0, rtol=1e-6, err_msg=name)
        assert float(m.min()) > 0
    for m in by_window.values():
        assert 0 <= float(m.min()) and float(m.max()) <= 1
    with pytest.raises(ValueError, match="normalize must be"):
        importance_maps(model, variables, images, "pixel")


def test_train_eval_and_importance_png_from_a_workdir(tmp_path, monkeypatch, capsys):
    data_dir = make_fashion_mnist(tmp_path / "data")
    workdir = tmp_path / "run"
    cli.main(["train", "--workdir", str(workdir), *tiny_overrides(data_dir, max_steps=3)])
    assert "eval_top1" in capsys.readouterr().out
    cli.main(["eval", "--workdir", str(workdir), *tiny_overrides(data_dir)])
    assert "eval_count       103.0" in capsys.readouterr().out
    out = tmp_path / "importance.png"
    monkeypatch.setattr(sys, "argv", ["show_importance.py", "--workdir", str(workdir),
                                      "--out", str(out), "--images", "3"])
    runpy.run_path(str(ROOT / "experiments" / "show_importance.py"), run_name="__main__")
    from PIL import Image
    image = Image.open(out)
    assert image.size == (2 * (28 * 4 + 4), 3 * (28 * 4 + 4))  # input + one LIP layer
