"""`lip-jax convert`, `lip-jax models`, `lip-jax eval` and the importance-map script."""

import re
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


def test_convert_rejects_unknown_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", str(tmp_path / "weights.bin"), "--model", "lip_resnet50",
                  "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "expected a .pth, .pt, .pth.tar, .npz or .safetensors file" in capsys.readouterr().err


def test_models_command_reports_each_model_at_its_input_size(capsys):
    cli.main(["models"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["lip_resnet50"][1:3] == ["224x224x3", "23.864"]
    assert 4.9 < float(rows["lip_resnet50"][3]) < 5.5 and rows["lip_resnet50"][4] == "23.9M"
    assert rows["lip_densenet121"][2] == "8.691"
    assert rows["lip_cnn"][1] == "28x28x1" and 0 < float(rows["lip_cnn"][3]) < 0.1


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


def test_train_rerun_eval_and_importance_png_from_a_workdir(tmp_path, monkeypatch, capsys):
    """eval and show_importance read the run's config.json (here a non-default model) and
    apply command-line overrides on top (here another data_dir, with 50 test images)."""
    workdir = tmp_path / "run"
    train = ["train", "--workdir", str(workdir), "--config.model=cnn",
             *tiny_overrides(make_fashion_mnist(tmp_path / "data"), max_steps=3)]
    cli.main(train)
    first = capsys.readouterr().out
    assert first.startswith("cnn on fashion_mnist") and re.search(r"eval_top1 +\d+\.\d\d%\n", first)
    cli.main(train)  # finished: prints the final metrics again
    assert re.search(r"eval_top1 +\d+\.\d\d%\n", capsys.readouterr().out)
    moved = make_fashion_mnist(tmp_path / "moved", num_test=50)
    cli.main(["eval", "--workdir", str(workdir), f"--config.data_dir={moved}"])
    out = capsys.readouterr().out
    assert out.startswith("cnn on fashion_mnist") and "eval_count       50\n" in out
    with pytest.raises(SystemExit):
        cli.main(["eval", "--workdir", str(workdir), "--config.model=lip_cnn"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lip_cnn" in err  # the mismatch, named in one line

    png = tmp_path / "importance.png"
    with pytest.raises(SystemExit):  # cnn has no LIP layer
        run_importance(monkeypatch, workdir, png)
    lip_run = tmp_path / "lip_run"
    cli.main(["train", "--workdir", str(lip_run),
              *tiny_overrides(tmp_path / "data", max_steps=2)])
    run_importance(monkeypatch, lip_run, png, f"--config.data_dir={moved}")
    from PIL import Image
    image = np.asarray(Image.open(png).convert("RGB"), np.int64)
    tile = 28 * 4 + 8  # the tiny lip_cnn has one LIP layer: columns input and pool1
    assert image.shape[0] > 3 * tile + 30 and image.shape[1] > 2 * tile + 30  # titles, bar
    assert image[:20, : 2 * tile].min() < 100  # column titles in dark text
    assert image[-20:, :tile].min() < 100  # the legend below the rows
    column = image[:, 2 * tile + 12]  # crosses the colour scale: bright yellow to black
    coloured = (column != 255).any(-1)
    start = coloured.argmax()
    bar = column[start:start + (~coloured[start:]).argmax()]
    assert len(bar) > 3 * tile - 10
    assert (bar[:3] > [240, 240, 140]).all() and (bar[-3:] < 20).all()


def run_importance(monkeypatch, workdir, out, *overrides):
    monkeypatch.setattr(sys, "argv", ["show_importance.py", "--workdir", str(workdir),
                                      "--out", str(out), "--images", "3", *overrides])
    runpy.run_path(str(ROOT / "experiments" / "show_importance.py"), run_name="__main__")
