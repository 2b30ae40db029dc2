"""Deep-learning contouring: MONAI networks, CPU-friendly training, sliding-window inference, post-processing, metrics.

- :mod:`.config`: training configs (YAML/JSON) and their defaults;
- :mod:`.networks`: 3D U-Net, residual U-Net and dilated (atrous) U-Net built from a config;
- :mod:`.data`: preloading cases, foreground-biased patch sampling, augmentation with a left-right label swap;
- :mod:`.losses`: BCE + Dice masked so that a structure not contoured for a patient teaches nothing;
- :mod:`.train`: the training loop (checkpoints, resume, logs, fixed seeds);
- :mod:`.inference`: sliding-window segmentation of a case with a model from :mod:`rtrai.models`;
- :mod:`.postprocess`: largest connected component, left/right consistency;
- :mod:`.metrics`: DSC, HD95, mean surface distance, surface DSC (MONAI).
"""
