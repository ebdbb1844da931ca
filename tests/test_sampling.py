"""Clip sampling and spatial parameters against hand-computed values; sharding across ranks.

tests/test_protocol.py checks the same functions against PySlowFast's own rules, reimplemented there.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import sampling


def test_val_clip_is_centred():
    # 100 frames, 4 x 2 at 30 fps: span 8, last start 92, centre 46 -> linspace(46, 53, 4) truncated
    assert sampling.val_clip_indices(100, 30.0, num_frames=4, sampling_rate=2).tolist() == [46, 48, 50, 53]


def test_reference_test_clips_start_at_delta_i_over_n():
    # 100 frames, span 8: delta 92; 4 clips start at 92 * i / 4 = 0, 23, 46, 69 -> linspace(s, s + 7, 4)
    clips = sampling.test_clip_indices(100, 30.0, num_clips=4, num_frames=4, sampling_rate=2)
    assert clips.tolist() == [[0, 2, 4, 7], [23, 25, 27, 30], [46, 48, 50, 53], [69, 71, 73, 76]]
    assert clips.dtype == np.int64
    # one clip: the reference starts at 0 (not centred)
    assert sampling.test_clip_indices(100, 30.0, num_clips=1, num_frames=4, sampling_rate=2).tolist() == \
        [[0, 2, 4, 7]]


def test_spread_test_clips_go_from_first_to_last_start():
    clips = sampling.test_clip_indices(100, 30.0, num_clips=3, num_frames=4, sampling_rate=2, rule="spread")
    assert clips.tolist() == [[0, 2, 4, 7], [46, 48, 50, 53], [92, 94, 96, 99]]
    assert sampling.test_clip_indices(100, 30.0, num_clips=1, num_frames=4, sampling_rate=2,
                                      rule="spread").tolist() == [[46, 48, 50, 53]]
    with pytest.raises(ValueError, match="clip_rule"):
        sampling.test_clip_indices(100, 30.0, num_clips=3, rule="uniform")


def test_train_clip_starts_uniformly_from_the_clip_rng():
    rng = sampling.clip_rng(5, 2, 7)
    start = np.random.default_rng([5, 2, 7]).uniform(0.0, 92.0)
    expected = [int(start + k * 7 / 3) for k in range(4)]
    assert sampling.train_clip_indices(100, 30.0, rng, num_frames=4, sampling_rate=2).tolist() == expected


def test_short_video_repeats_its_last_frame():
    # span 8 on a 5-frame video: linspace(0, 7, 4) = 0, 2.33, 4.67, 7 -> clamped to 4
    assert sampling.val_clip_indices(5, 30.0, num_frames=4, sampling_rate=2).tolist() == [0, 2, 4, 4]
    rng = sampling.clip_rng(0, 0, 0)
    assert sampling.train_clip_indices(5, 30.0, rng, num_frames=4, sampling_rate=2).tolist() == [0, 2, 4, 4]
    assert sampling.test_clip_indices(1, 30.0, num_clips=2, num_frames=4).tolist() == [[0] * 4] * 2
    assert sampling.test_clip_indices(1, 30.0, num_clips=2, num_frames=4, rule="spread").tolist() == [[0] * 4] * 2


def test_sixty_fps_doubles_the_span():
    assert sampling.clip_span(60.0, 4, 2, 30.0) == 16.0
    # 100 frames, span 16: centre start 42 -> linspace(42, 57, 4)
    assert sampling.val_clip_indices(100, 60.0, num_frames=4, sampling_rate=2).tolist() == [42, 47, 52, 57]
    # an unknown rate falls back to target_fps
    assert sampling.clip_span(0.0, 4, 2, 30.0) == 8.0


def test_slow_pathway_indices():
    assert sampling.slow_indices(8, 4).tolist() == [0, 7]
    assert sampling.slow_indices(32, 8).tolist() == [0, 10, 20, 31]
    with pytest.raises(ValueError, match="multiple of alpha"):
        sampling.slow_indices(10, 4)


def test_spatial_params():
    assert sampling.resized_shape(240, 320, 256) == (256, 341)
    assert sampling.resized_shape(320, 240, 256) == (341, 256)
    assert sampling.resized_shape(240, 240, 256) == (256, 256)
    # 341 - 256 = 85 free columns: left 0, centre ceil(42.5) = 43, right 85
    for rule in ("reference", "spread"):
        crops = sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=3, rule=rule)
        assert [(c.y, c.x) for c in crops] == [(0, 0), (0, 43), (0, 85)]
        portrait = sampling.test_spatial_params(320, 240, short_side=256, crop=256, num_crops=3, rule=rule)
        assert [(c.y, c.x) for c in portrait] == [(0, 0), (43, 0), (85, 0)]
        one = sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=1, rule=rule)
        assert [(c.y, c.x) for c in one] == [(0, 43)]
    # two crops: the reference takes spatial index view % 2 = 0, 1 (left, centre); spread takes both ends
    two = sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=2)
    assert [(c.y, c.x) for c in two] == [(0, 0), (0, 43)]
    two = sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=2, rule="spread")
    assert [(c.y, c.x) for c in two] == [(0, 0), (0, 85)]
    # four crops: no reference (uniform_crop has three positions); spread at ceil(85 * i / 3)
    with pytest.raises(ValueError, match="at most 3"):
        sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=4)
    four = sampling.test_spatial_params(240, 320, short_side=256, crop=256, num_crops=4, rule="spread")
    assert [c.x for c in four] == [0, 29, 57, 85]
    centre = sampling.val_spatial_params(240, 320, short_side=256, crop=224)
    assert (centre.resize_h, centre.resize_w, centre.y, centre.x, centre.flip) == (256, 341, 16, 59, False)


def test_train_spatial_params_stay_inside_and_vary():
    shorts, flips, xs = set(), set(), set()
    for video in range(200):
        p = sampling.train_spatial_params(240, 320, sampling.clip_rng(0, 0, video), (256, 260), 224)
        assert 256 <= min(p.resize_h, p.resize_w) <= 260
        # random_crop: randint(0, size - crop), the upper bound exclusive
        assert 0 <= p.y < p.resize_h - 224 and 0 <= p.x < p.resize_w - 224
        shorts.add(min(p.resize_h, p.resize_w))
        flips.add(p.flip)
        xs.add(p.x)
    assert shorts == {256, 257, 258, 259, 260} and flips == {True, False}


def test_train_crop_offset_is_zero_when_the_side_equals_the_crop():
    # short side 224 = crop: no vertical freedom (random_crop leaves offset 0), the long side 298 draws in [0, 74)
    xs = set()
    for video in range(300):
        p = sampling.train_spatial_params(240, 320, sampling.clip_rng(0, 0, video), (224, 224), 224)
        assert (p.resize_h, p.resize_w, p.y) == (224, 298, 0)
        xs.add(p.x)
    assert min(xs) == 0 and max(xs) == 73
    square = sampling.train_spatial_params(100, 100, sampling.clip_rng(0, 0, 0), (64, 64), 64)
    assert (square.resize_h, square.resize_w, square.y, square.x) == (64, 64, 0, 0)


def test_clip_rng_is_a_function_of_its_arguments():
    assert sampling.clip_rng(1, 2, 3).random() == sampling.clip_rng(1, 2, 3).random()
    assert sampling.clip_rng(1, 2, 3).random() == np.random.default_rng([1, 2, 3]).random()
    assert sampling.clip_rng(1, 2, 3, sampling.VAL_STREAM).random() == np.random.default_rng([1, 2, 3, 2]).random()
    assert sampling.clip_rng(1, 2, 3, sampling.VAL_STREAM).random() != sampling.clip_rng(1, 2, 3).random()
    assert sampling.clip_rng(1, 2, 3).random() != sampling.clip_rng(1, 2, 4).random()
    assert sampling.clip_rng(1, 2, 3).random() != sampling.clip_rng(1, 3, 3).random()


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_videos", [10, 11])
def test_eval_shards_cover_every_video_exactly_once(world_size, num_videos):
    shards = [sampling.shard_indices(num_videos, r, world_size, pad=True) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-num_videos // world_size)
    real = np.concatenate([s[s >= 0] for s in shards])
    assert sorted(real.tolist()) == list(range(num_videos))
    assert sum(int((s < 0).sum()) for s in shards) == len(shards[0]) * world_size - num_videos


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_shards_are_disjoint_equal_and_reshuffled(world_size):
    shards = [sampling.shard_indices(10, r, world_size, shuffle=True, seed=0, epoch=1, pad=False)
              for r in range(world_size)]
    assert {len(s) for s in shards} == {10 // world_size}
    union = np.concatenate(shards)
    assert len(set(union.tolist())) == len(union) and union.min() >= 0 and union.max() < 10
    again = sampling.shard_indices(10, 0, world_size, shuffle=True, seed=0, epoch=1, pad=False)
    assert again.tolist() == shards[0].tolist()
    orders = {tuple(sampling.shard_indices(10, 0, 1, shuffle=True, seed=0, epoch=e, pad=False)) for e in range(5)}
    assert len(orders) > 1


def test_shard_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank 2"):
        sampling.shard_indices(10, 2, 2)


def test_train_flip_can_be_turned_off_without_changing_the_other_draws():
    # direction-labelled data (left vs right) must not be flipped; the scale and crop stay those of the stream
    flips = []
    for video in range(64):
        with_flip = sampling.train_spatial_params(120, 160, sampling.clip_rng(3, 1, video), (128, 144), 112)
        without = sampling.train_spatial_params(120, 160, sampling.clip_rng(3, 1, video), (128, 144), 112,
                                                allow_flip=False)
        assert not without.flip
        assert (without.resize_h, without.resize_w, without.y, without.x) == \
            (with_flip.resize_h, with_flip.resize_w, with_flip.y, with_flip.x)
        flips.append(with_flip.flip)
    assert 0 < sum(flips) < 64
