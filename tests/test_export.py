"""models.export: TorchScript and ONNX files that compute what the eager model computes."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models import CHECKPOINT_FORMAT, create_model
from models.export import ExportError, export, main, model_for_export

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One of our checkpoints (slowfast_tiny, 5 classes) carrying a configuration of 8 frames at 32 px."""
    from configs import load_config

    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=5)
    for module in model.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    cfg = load_config(None, ["model.name=slowfast_tiny", "model.num_classes=5", "data.num_frames=8",
                             "data.train_crop=32", "data.train_short_side=[32,36]", "data.val_crop=32",
                             "data.test_short_side=32", "data.test_crop=32"])
    path = tmp_path_factory.mktemp("export") / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": "slowfast_tiny",
                "model_args": dataclasses.asdict(model.arch), "config": cfg.to_dict()}, path)
    return path, model.eval()


def _inputs(batch: int, frames: int = 8, size: int = 32, alpha: int = 4):
    generator = torch.Generator().manual_seed(batch)
    fast = torch.randn(batch, 3, frames, size, size, generator=generator)
    return fast[:, :, ::alpha].contiguous(), fast


def test_onnx_matches_eager_with_a_dynamic_batch(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path, reference = checkpoint
    out = tmp_path / "model.onnx"
    assert main(["-w", str(path), "--format", "onnx", "--output", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["slow", "fast"]
    assert session.get_inputs()[1].shape[1:] == [3, 8, 32, 32]  # geometry from the checkpoint's configuration
    for batch in (1, 3):  # another batch than the one traced
        slow, fast = _inputs(batch)
        (logits,) = session.run(None, {"slow": slow.numpy(), "fast": fast.numpy()})
        with torch.no_grad():
            expected = reference([slow, fast]).numpy()
        assert logits.shape == (batch, 5)
        assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


def test_torchscript_loads_in_a_fresh_process(checkpoint, tmp_path):
    path, reference = checkpoint
    out = tmp_path / "model.ts"
    assert main(["-w", str(path), "--format", "torchscript", "--output", str(out)]) == 0
    slow, fast = _inputs(2)
    torch.save({"slow": slow, "fast": fast}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        module = torch.jit.load({str(out)!r})
        x = torch.load({str(tmp_path / 'inputs.pt')!r})
        torch.save(module(x["slow"], x["fast"]), {str(tmp_path / 'out.pt')!r})
    """)  # no project import: the file stands alone
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    logits = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = reference([slow, fast])
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_foreign_weights_need_a_model_and_bad_requests_are_one_line(checkpoint, tmp_path):
    path, reference = checkpoint
    bare = tmp_path / "bare.pt"
    torch.save(reference.state_dict(), bare)  # a bare state dict says nothing about its model
    model, geometry = model_for_export(bare, None, ["model.name=slowfast_tiny", "model.num_classes=5"])
    assert model.arch.num_classes == 5 and geometry == {"frames": 32, "size": 224}
    with pytest.raises(ExportError, match="not a multiple of the model's alpha 4"):
        export(reference, tmp_path / "x.onnx", "onnx", frames=6, size=32)
    with pytest.raises(ExportError, match="--opset 11 is too old"):
        export(reference, tmp_path / "x.onnx", "onnx", frames=8, size=32, opset=11)
    assert not (tmp_path / "x.onnx").exists()
    proc = subprocess.run([sys.executable, "-m", "models.export", "-w", str(tmp_path / "absent.pt"), "--format",
                           "onnx", "--output", str(tmp_path / "y.onnx")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: weights file {str(tmp_path / 'absent.pt')!r} does not exist; pass -w with a checkpoint or weights file"]
