"""Model, data, loss, metrics and the per-worker loop of one trial (no Tune in here).

Importing sam3 emits import-time warnings that say nothing about this project's use of it (its video
predictor decorates functions with CUDA autocast; torch deprecates ``torch.jit.script``, which sam3
uses). They are silenced here, once, before any sam3 import, so that worker logs stay readable.

Where Triton is not installed (Windows), a stand-in ``triton`` module is put in place first, so that sam3's
modules import at all (:func:`trainables.sam3_compat.provide_triton`).
"""

import warnings

from trainables import sam3_compat

warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported", category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

sam3_compat.provide_triton()
