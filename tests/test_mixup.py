"""Label smoothing, mixup and cutmix (engine/mixup.py, ``train.mixup.*``): the label arithmetic by hand, the same
mix on both pathways, seeded draws, and a training step that is bit-identical to the plain one when disabled."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import trainer as tr
from engine.mixup import (MixUp, cutmix_box, dominant_labels, mix_targets, mixup_rng, smoothed_one_hot,
                          soft_target_cross_entropy)
from engine.precision import resolve_precision
from test_train import _trainer, memory_data  # noqa: F401  (memory_data: a fixture)

FP32 = resolve_precision("fp32", torch.device("cpu"), explicit=False)


class FixedRng:
    """Stands in for numpy's Generator with chosen draws: ``random()`` and ``beta()`` values, ``integers()`` values."""

    def __init__(self, random=(), beta=(), integers=()):
        self._random, self._beta, self._integers = list(random), list(beta), list(integers)

    def random(self):
        return self._random.pop(0)

    def beta(self, a, b):
        return self._beta.pop(0)

    def integers(self, low, high):
        value = self._integers.pop(0)
        assert low <= value < high
        return value


def test_smoothed_one_hot_by_hand():
    targets = smoothed_one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    # eps / K = 0.025 off the label, 1 - 0.1 + 0.025 = 0.925 on it
    expected = torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]])
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(smoothed_one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))


def test_mixed_targets_by_hand():
    # labels 0, 2, 3: sample i is paired with sample 2 - i (the batch reversed); lam 0.7, eps 0.1 over K = 4
    targets = mix_targets(torch.tensor([0, 2, 3]), 4, lam=0.7, smoothing=0.1)
    on, off = 0.925, 0.025
    expected = torch.tensor([
        [0.7 * on + 0.3 * off, off, off, 0.7 * off + 0.3 * on],  # 0 mixed with 3
        [off, off, on, off],  # the middle sample meets itself
        [0.7 * off + 0.3 * on, off, off, 0.7 * on + 0.3 * off],  # 3 mixed with 0
    ])
    torch.testing.assert_close(targets, expected)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert dominant_labels(targets).tolist() == [0, 2, 3]


def test_cutmix_box_and_lambda_corrected_by_the_clipped_area():
    # H = W = 10, lam 0.64: side 10 * sqrt(0.36) = 6, half 3; centre (1, 8): rows 0..4 (clipped at the top),
    # columns 5..10 (clipped at the right) -> area 4 * 5 = 20 -> lam = 1 - 20 / 100 = 0.8
    box, lam = cutmix_box(10, 10, 0.64, FixedRng(integers=[1, 8]))
    assert box == (0, 4, 5, 10)
    assert lam == pytest.approx(0.8)
    # unclipped: centre (5, 5) -> rows 2..8, columns 2..8, area 36 -> lam 0.64
    box, lam = cutmix_box(10, 10, 0.64, FixedRng(integers=[5, 5]))
    assert box == (2, 8, 2, 8) and lam == pytest.approx(0.64)


def _pathways(n=4, height=10, width=10):
    """Sample i is the constant i + 1 (slow: 2 frames, fast: 8 frames), so every pixel says whose it is."""
    fill = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1, 1)
    return [fill.expand(n, 3, 2, height, width).clone(), fill.expand(n, 3, 8, height, width).clone()]


def test_cutmix_pastes_the_same_box_into_both_pathways_over_every_frame():
    mixup = MixUp(num_classes=5, alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0)
    inputs, labels = _pathways(), torch.tensor([0, 1, 2, 3])
    original = [x.clone() for x in inputs]
    # prob draw 0.1 < 1 -> mix; cutmix only (alpha 0); Beta draw 0.64; centre (1, 8): the box of the test above
    mixed, targets = mixup(inputs, labels, FixedRng(random=[0.1], beta=[0.64], integers=[1, 8]))
    for x, before in zip(inputs, original):
        assert torch.equal(x, before)  # the loader's tensors are left alone
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[0:4, 5:10] = True
    for x in mixed:
        for i in range(4):
            assert (x[i][..., inside] == 4 - i).all()  # partner N-1-i, every channel and frame
            assert (x[i][..., ~inside] == i + 1).all()
    lam = 0.8
    torch.testing.assert_close(targets[0], torch.tensor([lam, 0, 0, 1 - lam, 0]))
    torch.testing.assert_close(targets[1], torch.tensor([0, lam, 1 - lam, 0, 0]))


def test_mixup_blends_both_pathways_with_one_lambda():
    mixup = MixUp(num_classes=5, alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1)
    inputs, labels = _pathways(), torch.tensor([0, 1, 2, 4])
    mixed, targets = mixup(inputs, labels, FixedRng(random=[0.5], beta=[0.3]))
    for x in mixed:
        for i in range(4):
            assert torch.allclose(x[i], torch.full_like(x[i], 0.3 * (i + 1) + 0.7 * (4 - i)))
    on, off = 1 - 0.1 + 0.02, 0.02
    torch.testing.assert_close(targets[0], torch.tensor([0.3 * on + 0.7 * off, off, off, off, 0.3 * off + 0.7 * on]))
    assert dominant_labels(targets).tolist() == [4, 2, 1, 0]  # lam 0.3: the partner dominates


def test_not_mixed_draws_leave_the_inputs_and_smooth_the_labels():
    mixup = MixUp(num_classes=4, prob=0.5, label_smoothing=0.2)
    inputs = _pathways()
    mixed, targets = mixup(inputs, torch.tensor([3, 2, 1, 0]), FixedRng(random=[0.9]))  # 0.9 >= prob: no mix
    assert all(m is x for m, x in zip(mixed, inputs))
    torch.testing.assert_close(targets[0], torch.tensor([0.05, 0.05, 0.05, 0.85]))


def test_switch_prob_picks_cutmix_or_mixup():
    mixup = MixUp(num_classes=3, alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    assert mixup.draw(FixedRng(random=[0.0, 0.4], beta=[0.64], integers=[5, 5]), 10, 10).box == (2, 8, 2, 8)
    assert mixup.draw(FixedRng(random=[0.0, 0.6], beta=[0.3]), 10, 10).box is None


def test_draws_are_a_function_of_seed_epoch_micro_batch_and_rank():
    mixup = MixUp(num_classes=5)
    inputs, labels = _pathways(), torch.tensor([0, 1, 2, 3])
    first = mixup(inputs, labels, mixup_rng(0, 3, 7, 0))
    again = mixup(inputs, labels, mixup_rng(0, 3, 7, 0))
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0])) and torch.equal(first[1], again[1])
    draws = {tuple(mixup(inputs, labels, mixup_rng(*key))[1][0].tolist())
             for key in [(0, 3, 7, 0), (1, 3, 7, 0), (0, 4, 7, 0), (0, 3, 8, 0), (0, 3, 7, 1)]}
    assert len(draws) == 5


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([[0.2, 0.8, 0.0], [0.5, 0.0, 0.5]])
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    expected = -(targets * log_p).sum(1).mean()
    torch.testing.assert_close(soft_target_cross_entropy(logits, targets), expected)
    # one-hot targets: the ordinary cross-entropy
    labels = torch.tensor([1, 2])
    torch.testing.assert_close(soft_target_cross_entropy(logits, F.one_hot(labels, 3).float()),
                               F.cross_entropy(logits, labels))


def test_disabled_mixup_leaves_the_step_bit_identical(tmp_path, memory_data):
    trainer = _trainer(tmp_path, "-o", "train.mixup.alpha=0.3", "-o", "train.mixup.label_smoothing=0.2")
    assert trainer.mixup is None  # enable: false whatever the other values
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reference.load_state_dict(model.state_dict())
    inputs, labels = torch.randn(4, 12), torch.tensor([0, 2, 1, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    for _ in range(2):
        result = tr.train_step(lambda x: model(x[0]), optimizer, [inputs], labels, FP32)
        # the step as it was before accumulation and mixup existed
        loss = F.cross_entropy(reference(inputs).float(), labels)
        loss.backward()
        ref_optimizer.step()
        ref_optimizer.zero_grad(set_to_none=True)
        assert result.loss == loss.item()
    for (name, value), ref in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, ref), name


class _Spy(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, inputs):
        self.seen.append([x.detach().clone() for x in inputs])
        return self.model(inputs)


def test_the_trainer_mixes_every_micro_batch_with_its_seeded_draw(tmp_path, memory_data):
    trainer = _trainer(tmp_path, "-o", "train.mixup.enable=true", "-o", "train.accumulate=2",
                       "-o", "train.seed=5")
    assert trainer.mixup == MixUp(num_classes=3, alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                                  label_smoothing=0.1)  # PySlowFast's MIXUP defaults
    spy = _Spy(trainer.model)
    trainer.model = spy
    summary = tr.train_one_epoch(trainer, 1)
    assert summary["skipped_steps"] == 0 and trainer.iteration == 3
    # what the model saw = the loader's batches of epoch 1, mixed with mixup_rng(seed 5, epoch 1, index, rank 0)
    loader = memory_data[-1]
    loader.set_epoch(1)
    for index, ((pathways, labels, _), seen) in enumerate(zip(loader, spy.seen)):
        expected, _ = trainer.mixup(pathways, labels, mixup_rng(5, 1, index, 0))
        for got, want in zip(seen, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len(spy.seen) == 6


def test_mixing_needs_two_clips_per_micro_batch(tmp_path, memory_data):
    with pytest.raises(tr.TrainingError, match=r"data.batch_size=1; use data.batch_size >= 2"):
        _trainer(tmp_path, "-o", "train.mixup.enable=true", "-o", "data.batch_size=1")
    trainer = _trainer(tmp_path, "-o", "train.mixup.enable=true", "-o", "data.batch_size=1",
                       "-o", "train.mixup.alpha=0", "-o", "train.mixup.cutmix_alpha=0")
    assert trainer.mixup is not None and not trainer.mixup.mixes  # label smoothing alone
