"""Dose: prediction, evaluation and DVHs. Laid out as :mod:`rtrai.segmentation` is:

- :mod:`.config`: training defaults and shipped configs; :mod:`.encoding`: a case as network input channels;
- :mod:`.networks`: the prior + U-Net correction (MONAI) and the adversarial mode's discriminator;
- :mod:`.augmentation`: left-right flips with paired organs swapped, affine warps (MONAI);
- :mod:`.losses`, :mod:`.train`: the training loop; :mod:`.export`: zoo model files and ensembles;
- :mod:`.inference`: :class:`~rtrai.dose.inference.DosePredictor`; :mod:`.beams`: the ray-traced beam prior;
- :mod:`.dvh`, :mod:`.constraints`, :mod:`.gamma`, :mod:`.scores` (OpenKBP scores, isodose Dice): evaluation;
  :mod:`.dvh_phantoms`: dose phantoms with closed-form DVHs.

Heavy imports (torch, MONAI) happen inside the functions that need them.
"""
