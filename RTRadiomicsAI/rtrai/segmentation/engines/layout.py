"""A network trained elsewhere, run inside rtrai's sliding window: rtrai's windowed (N, C, z, y, x) LPS patches in
[-1, 1] become the intensity range and array layout the network was trained on, and its output comes back the same
way. MONAI's loaders give (C, x, y, z) arrays in the orientation of an ``Orientation(axcodes=...)`` transform
("RAS": x runs to the patient's right, y to anterior, z to superior); rtrai's are (C, z, y, x) with x to the left,
y to posterior, z to superior (LPS)."""

from __future__ import annotations

from rtrai.core.errors import ModelError

LPS = "LPS"
OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def axis_order(axcodes: str) -> tuple[list[int], list[int]]:
    """For MONAI ``axcodes`` ("RAS", "LPS", "PLS", ...): the physical axis (0 x, 1 y, 2 z) of each network axis, and
    the network axes that run opposite to LPS."""
    codes = str(axcodes).upper()
    order = [next((j for j, c in enumerate(LPS) if letter in (c, OPPOSITE[c])), None) for letter in codes
             if letter in OPPOSITE]
    if len(codes) != 3 or sorted(o for o in order if o is not None) != [0, 1, 2]:
        raise ModelError(f"axcodes '{axcodes}' are not three letters naming each of L/R, P/A, S/I once")
    return order, [i for i, letter in enumerate(codes) if letter not in LPS]


def spacing_bounds(spacing) -> list[list[float]]:
    """A model's spacing as rtrai's ``spacing_mm`` bounds [[low x, y, z], [high x, y, z]] (one spacing: low = high)."""
    pair = isinstance(spacing[0], (list, tuple))
    values = [list(map(float, s)) for s in spacing] if pair else [list(map(float, spacing))] * 2
    if len(values) != 2 or any(len(v) != 3 or min(v) <= 0 for v in values):
        raise ModelError(f"spacing {spacing} is not three positive numbers (x, y, z mm) or a [low, high] pair of them")
    return values


def foreign_network(network, ranges, axcodes: str | None = None):
    """``network`` wrapped to take rtrai's patches: ``ranges`` per input channel ([-1, 1] -> [low, high]),
    ``axcodes`` its array layout (None: rtrai's own)."""
    import torch

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            low = torch.tensor([float(r[0]) for r in ranges]).view(1, -1, 1, 1, 1)
            high = torch.tensor([float(r[1]) for r in ranges]).view(1, -1, 1, 1, 1)
            self.register_buffer("low", low)
            self.register_buffer("half_width", (high - low) / 2)
            self.rescale = any(tuple(map(float, r)) != (-1.0, 1.0) for r in ranges)
            self.order, self.flips = axis_order(axcodes) if axcodes else (None, [])

        def forward(self, x):
            if self.rescale:
                x = self.low + (x + 1.0) * self.half_width
            if self.order is not None:
                x = x.permute(0, 1, 4, 3, 2).permute(0, 1, *(2 + j for j in self.order))
                if self.flips:
                    x = x.flip([2 + i for i in self.flips])
            out = self.network(x)
            if isinstance(out, (list, tuple)):  # deep supervision heads: the first is the full-resolution output
                out = out[0]
            if self.order is not None:
                if self.flips:
                    out = out.flip([2 + i for i in self.flips])
                back = [self.order.index(j) for j in range(3)]
                out = out.permute(0, 1, *(2 + i for i in back)).permute(0, 1, 4, 3, 2)
            return out

        def physical_xyz(self, values) -> list:
            """Per-axis values in the network's axis order (a patch size, a spacing) in physical x, y, z order."""
            values = list(values)
            if len(values) != 3:
                raise ModelError(f"{values}: expected three values, one per axis")
            if self.order is None:
                return values[::-1]
            out = [None] * 3
            for i, j in enumerate(self.order):
                out[j] = values[i]
            return out

        def patch_zyx(self, patch) -> list[int]:
            """A patch in the network's axis order as rtrai's (z, y, x) patch."""
            return [int(p) for p in self.physical_xyz(patch)[::-1]]

    return Foreign()
