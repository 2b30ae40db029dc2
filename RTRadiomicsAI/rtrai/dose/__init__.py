"""Dose: prediction (``prediction``), DVHs (``dvh``), gamma (``gamma``), OpenKBP scores and isodose Dice (``scores``).

Heavy imports (torch, MONAI) happen inside the functions that need them.
"""
