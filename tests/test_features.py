"""Pooled features (``SlowFast.features``, ``test.py --save-features``): equal to the global means of the two res5
outputs taken by hand, averaged over each video's views, in a file numpy reads without pickle, row for row with
predictions.jsonl."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import create_model
from test_evaluate import (SMALL, VIDEOS, _overrides, _reference_views, _run_test_py,  # noqa: F401
                           dataset)


def _res5_means(model: torch.nn.Module, inputs: list) -> torch.Tensor:
    """Concat of the global (T, H, W) means of slow_res5's and fast_res5's outputs, caught by forward hooks."""
    caught = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: caught.__setitem__(name, o))
             for name in ("slow_res5", "fast_res5")]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat([caught["slow_res5"].mean(dim=(2, 3, 4)), caught["fast_res5"].mean(dim=(2, 3, 4))], dim=1)


@pytest.mark.parametrize("size", [32, 96])  # 96 > the training crop at head_pooling=reference: still global
def test_features_are_the_global_means_of_both_res5_outputs(size):
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=5, train_crop=64).eval()
    fast = torch.randn(3, 3, 8, size, size)
    inputs = [fast[:, :, [0, 7]], fast]
    expected = _res5_means(model, inputs)
    with torch.no_grad():
        features = model.features(inputs)
        scores, same = model.scores_and_features(inputs)
        plain = model(inputs)
    assert features.shape == (3, model.head.proj.in_features)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(same, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, plain, rtol=0, atol=0)  # the scores of the same pass are forward's


def test_r50_features_have_2304_channels():
    model = create_model("slowfast_r50_4x16", num_classes=10)
    assert model.head.proj.in_features == 2048 + 256


class _ViewsLoader:
    """A test loader over fixed views (no decoding): 5 videos x 3 views, 2 videos per batch, the last batch
    padded with a ``video_index == -1`` video as the sharded loaders do."""

    def __init__(self, views_per_video: int = 3):
        from pipelines.dataset import VideoRecord

        gen = torch.Generator().manual_seed(3)
        self.views = views_per_video
        self.fast = torch.randn(5, views_per_video, 3, 8, 32, 32, generator=gen)  # (videos, views, C, T, H, W)
        self.records = [VideoRecord(path=f"clip{i}.webm", label=(2 * i) % 5) for i in range(5)]
        self.failures: list = []

    def views_of(self, video: int) -> list:
        fast = self.fast[video]
        return [fast[:, :, [0, 7]], fast]

    def __iter__(self):
        order = [0, 1, 2, 3, 4, -1]
        for start in range(0, len(order), 2):
            index = torch.tensor(order[start:start + 2])
            fast = torch.cat([self.fast[max(int(i), 0)] for i in index])  # (2 * views, C, T, H, W), video-major
            yield [fast[:, :, [0, 7]], fast], torch.tensor([self.records[max(int(i), 0)].label for i in index]), index


def test_evaluator_features_are_the_view_mean_of_the_hand_computed_res5_means_from_the_same_pass(tmp_path):
    from engine import evaluator as ev
    from engine.precision import resolve_precision

    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=5).eval()
    loader = _ViewsLoader()
    passes = []
    real = model.res5_features
    model.res5_features = lambda inputs: passes.append(len(inputs[1])) or real(inputs)
    cpu = torch.device("cpu")
    result = ev.evaluate(model, loader, num_views=loader.views, device=cpu,
                         precision=resolve_precision("fp32", cpu, explicit=False), with_features=True)
    assert passes == [6, 6, 3]  # one forward per batch (scores and features together), padding dropped
    del model.res5_features
    expected = np.stack([_res5_means(model, loader.views_of(v)).mean(0).numpy() for v in range(5)])
    assert result.video_indices.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(result.features, expected, rtol=1e-5, atol=1e-6)
    path = ev.save_features(tmp_path / "f.npz", result.features, result.labels,
                            [loader.records[i].path for i in result.video_indices])
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["features", "labels", "paths"]
        np.testing.assert_array_equal(npz["features"], result.features)
        assert npz["labels"].tolist() == [0, 2, 4, 1, 3]
        assert npz["paths"].tolist() == [f"clip{i}.webm" for i in range(5)]


def test_save_features_of_a_list_evaluation_follows_predictions_jsonl(dataset, tmp_path):
    root, model = dataset["root"], dataset["model"]
    out = tmp_path / "out"
    cfg_args = SMALL + [f"data.root={root}", f"data.test_list={root / 'test.list'}",
                        f"data.class_names={root / 'classes.txt'}"]
    done = _run_test_py("-w", str(dataset["checkpoint"]), "--output-dir", str(out), "--no-progress",
                        "--save-features", str(out / "features.npz"), "--save-scores", str(out / "scores.npz"),
                        *_overrides(cfg_args))
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out / "features.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["features", "labels", "paths"]
        features, labels, paths = npz["features"], npz["labels"], npz["paths"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert paths.tolist() == [r["path"] for r in rows] == list(VIDEOS)
    assert labels.tolist() == [r["label"] for r in rows] == dataset["labels"].tolist()
    assert features.dtype == np.float32 and features.shape == (len(VIDEOS), model.head.proj.in_features)
    assert np.isfinite(features).all()
    # (the values are checked against a hand computation on fixed views above; here the file and its rows)
    with np.load(out / "scores.npz", allow_pickle=False) as npz:
        assert npz["paths"].tolist() == paths.tolist()
    assert str(out / "features.npz") in json.loads((out / "metrics.json").read_text())["files"]


def test_save_features_with_video_files(dataset, tmp_path):
    root = dataset["root"]
    out = tmp_path / "videos"
    missing = tmp_path / "missing.webm"
    files = [str(root / "v1.webm"), str(missing), str(root / "v0.webm")]
    cfg_args = SMALL + [f"data.class_names={root / 'classes.txt'}"]
    done = _run_test_py("-w", str(dataset["checkpoint"]), "--output-dir", str(out), "--no-progress",
                        "--save-features", str(out / "f.npz"), "--video", *files, *_overrides(cfg_args))
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out / "f.npz", allow_pickle=False) as npz:
        features, labels, paths = npz["features"], npz["labels"], npz["paths"]
    predicted = [r["path"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())
                 if r["error"] is None]
    assert paths.tolist() == predicted == [files[0], files[2]]
    assert labels.tolist() == [-1, -1]
    assert features.shape == (2, dataset["model"].head.proj.in_features) and np.isfinite(features).all()
