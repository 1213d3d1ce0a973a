"""coqat: compute-optimal quantization-aware training.

Layers depend one way: data -> model -> quant -> train -> sweep. ``coqat.law`` and
``coqat.plan`` are pure numpy/scipy and never import torch.
"""

__version__ = "0.1.0"
