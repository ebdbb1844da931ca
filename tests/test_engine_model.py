"""engine.model: the network a run uses when only a weights file says which it is."""
from __future__ import annotations

import torch

from configs import load_config
from engine.model import build_model, pin_model_from_weights
from test_weights import NUM_CLASSES, pyslowfast_name, reference_slowfast


def test_training_from_a_foreign_file_trains_the_model_the_file_holds(tmp_path):
    """train.py -w FILE without -c: the R50 at width 8 (alpha 4, fusion kernel 5) of a PySlowFast file, not the
    defaults' R50 4x16; the configuration records it so that a resumed or tested run rebuilds the same network."""
    reference = reference_slowfast(width=8, beta_inv=4, alpha=4, fusion_kernel=5, seed=3)
    path = tmp_path / "pyslowfast.pyth"
    torch.save({"model_state": {pyslowfast_name(k): v for k, v in reference.state_dict().items()},
                "cfg": "SLOWFAST:\n  ALPHA: 4\n"}, path)
    cfg = load_config(None, ["model.num_classes=5"])  # the defaults pin nothing but a 400-class R50 4x16
    pin_model_from_weights(cfg, path)
    model = build_model(cfg, torch.device("cpu"), path)  # the training path: fine-tunes a 5-class head
    assert (model.arch.width, model.arch.alpha, model.arch.fusion_kernel, model.arch.num_classes) == (8, 4, 5, 5)
    again = build_model(load_config(None, [f"model.name={cfg.model.name}", "model.num_classes=5"]
                                    + [f"model.args={dict(cfg.model.args)}"]), torch.device("cpu"))
    assert type(again) is type(model) and again.arch == model.arch
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.proj")}
    expected = reference.state_dict()
    assert torch.equal(body["slow_stem.conv.weight"], expected["blocks.0.multipathway_blocks.0.conv.weight"])
    assert NUM_CLASSES != 5
