"""Every checkpoint format of the project, one file each.

- :mod:`.files`: safe reading and atomic writing of torch files (all formats use them);
- :mod:`.allowlist`: the plain training metadata (numpy scalars, ``Namespace``, OmegaConf, ...) a Phase 1
  file may hold beside its weights, allowed for the surgery's ``weights_only`` read;
- :mod:`.native`: SAM3's native format (``{"detector." + key: fp32 tensor}``), strict loading;
- :mod:`.trial`: a trial's resumable checkpoint (native model + optimizer, scheduler, RNG, metrics);
- :mod:`.phase1`: the Phase 1 training wrapper's format (``sam3.``-prefixed backbone plus custom heads);
- :mod:`.surgery`: Phase 1 -> native (``python -m trainables.checkpoints.surgery IN OUT``);
- :mod:`.exported`: an export folder (model, config, metrics, manifest), its checks and its loading.
"""
