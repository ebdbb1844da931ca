"""What is computed: the SlowFast family behind a small registry, and importers for other projects' weights.

``create_model(name, num_classes=400, **overrides)`` builds a registered variant (``list_models()``);
``model_from_arch(name, arch_dict)`` rebuilds one from a checkpoint's ``model_name`` / ``model_args``;
``load_weights(model, path)`` loads this project's checkpoints and PySlowFast, pytorchvideo, Caffe2, PaddleVideo
and MMAction2 weights into a model; ``load_pretrained(path)`` builds the model a weights file fits (with the
source's input conventions in ``model.arch``) and loads it. ``slow_frame_indices`` is the meaning of
``arch.slow_sampling``. The checkpoint format itself is defined in :mod:`models.checkpoint_format`.
"""
from models import slowfast  # noqa: F401  (registers the SlowFast variants)
from models.checkpoint_format import CHECKPOINT_FORMAT
from models.registry import create_model, list_models, model_from_arch, register_model, unwrap_model
from models.slowfast import SlowFast, SlowFastArch, slow_frame_indices
from models.weights import FORMATS, LoadReport, WeightsError, load_pretrained, load_weights

__all__ = ["create_model", "list_models", "model_from_arch", "register_model", "unwrap_model", "load_weights",
           "load_pretrained", "slow_frame_indices", "LoadReport", "WeightsError", "FORMATS", "CHECKPOINT_FORMAT",
           "SlowFast", "SlowFastArch"]
