"""pytorchvideo's reference SlowFast builder, for the tests that prove our model and importers against it."""
import importlib
import sys
import types

import torch.nn as nn


def import_pytorchvideo_slowfast():
    """pytorchvideo's ``create_slowfast``. Its package import wants torchvision (its head module imports
    RoIAlign, unused here), so a stand-in is installed only for the import when torchvision is absent."""
    try:
        importlib.import_module("torchvision.ops")
        return importlib.import_module("pytorchvideo.models.slowfast").create_slowfast
    except ImportError:
        pass
    fake_tv, fake_ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    fake_ops.RoIAlign = type("RoIAlign", (nn.Module,), {})
    fake_tv.ops = fake_ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = fake_tv, fake_ops
    try:
        return importlib.import_module("pytorchvideo.models.slowfast").create_slowfast
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
