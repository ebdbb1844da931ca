"""train.py on a GPU: bf16 autocast, channels-last, the DALI GPU loader on H.264 synthetic videos.

Skipped without CUDA (and without DALI).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")

import train  # noqa: E402
from engine import checkpoint as ckpt  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.dali,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)"),
]


@pytest.fixture(scope="module")
def h264_dataset(tmp_path_factory):
    from pipelines.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("h264_motion")
    return generate_dataset(
        root,
        num_train_per_class=2,
        num_val_per_class=1,
        width=64,
        height=48,
        num_frames=32,
        fps=30,
        codec="h264",
        seed=0,
        keyframe_interval=8,
        workers=2,
        progress=False,
    )


def test_bf16_channels_last_steps_with_the_dali_gpu_loader(h264_dataset, tmp_path):
    root = h264_dataset["root"]
    seen: dict = {}
    real_epoch = train.train_one_epoch

    def spy(trainer, epoch):
        batch = next(iter(trainer.train_loader))
        (slow, fast), labels, _ = batch
        seen.update(
            device=fast.device.type,
            channels_last=fast.is_contiguous(memory_format=torch.channels_last_3d),
            dtype=fast.dtype,
            precision=trainer.precision.name,
            autocast=trainer.precision.dtype,
            before={k: v.clone() for k, v in trainer.bare_model.state_dict().items()},
        )
        summary = real_epoch(trainer, epoch)
        seen["after"] = {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}
        return summary

    train.train_one_epoch = spy
    try:
        summary = train.main(
            [
                "--validate",
                "--output-dir",
                str(tmp_path / "run"),
                "-o",
                "model.name=slowfast_tiny",
                "-o",
                "model.num_classes=8",
                "-o",
                "model.channels_last=true",
                "-o",
                f"data.root={root}",
                "-o",
                f"data.train_list={h264_dataset['train_list']}",
                "-o",
                f"data.val_list={h264_dataset['val_list']}",
                "-o",
                "data.backend=dali",
                "-o",
                "data.device=gpu",
                "-o",
                "data.dtype=bf16",
                "-o",
                "data.batch_size=4",
                "-o",
                "data.num_frames=8",
                "-o",
                "data.sampling_rate=2",
                "-o",
                "data.train_short_side=[48,56]",
                "-o",
                "data.train_crop=48",
                "-o",
                "data.val_crop=48",
                "-o",
                "data.test_short_side=48",
                "-o",
                "data.num_workers=2",
                "-o",
                "train.precision=bf16",
                "-o",
                "train.epochs=2",
                "-o",
                "train.warmup_epochs=1",
                "-o",
                "train.precise_bn_batches=2",
                "-o",
                "train.log_every=1",
            ]
        )
    finally:
        train.train_one_epoch = real_epoch

    # The loader hands over bf16 channels-last CUDA tensors; training ran bf16 autocast.
    assert seen["device"] == "cuda" and seen["dtype"] == torch.bfloat16 and seen["channels_last"]
    assert seen["precision"] == "bf16" and seen["autocast"] == torch.bfloat16
    # 16 videos / batch 4 = 4 steps per epoch, 2 epochs, all finite, and the weights moved (in fp32).
    assert summary["iteration"] == 8 and summary["nonfinite_steps"] == 0
    moved = [
        k for k, v in seen["after"].items() if v.is_floating_point() and not torch.equal(v, seen["before"][k])
    ]
    assert len(moved) > 10
    assert all(v.dtype == torch.float32 for v in seen["after"].values() if v.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "iter" and r.get("max_mem_gib", 0) > 0 for r in records)
    state = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    assert state["metrics"]["val"]["videos"] == 8
