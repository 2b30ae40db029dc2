"""Sums in numpy's order, for the voxel-map engine's bit-for-bit equality with pyradiomics' voxel mode.

A sum numpy takes over pyradiomics' dense matrices adds the elements one after the other in the array's memory order
(row- or column-major over (i, j), depending on how ``numpy.delete`` and broadcasting laid the array out); zeros add
nothing. So the engine computes the same non-zero terms with the same expressions and adds them in that order
(:class:`Groups`: sums and maxima of sparse terms grouped by voxel, in a given order), the order being read off
pyradiomics' own expressions run on a two-voxel stand-in (:func:`layouts`, the numpy-layout probe).
"""

from __future__ import annotations

import functools

import numpy as np

from rtrai.radiomics.voxel_plan import EPS

_IOTA = np.arange(1 << 16)
_IOTA.flags.writeable = False


def iota(n: int) -> np.ndarray:
    """``np.arange(n)`` as a read-only view of a cached array (it is needed dozens of times per chunk)."""
    global _IOTA
    if _IOTA.size < n:
        _IOTA = np.arange(max(n, 2 * _IOTA.size))
        _IOTA.flags.writeable = False
    return _IOTA[:n]


class Groups:
    """Sums (and maxima) of entries per group, adding each group's entries one after the other in the order given.

    ``gid`` must be sorted (a group's entries contiguous, in the order pyradiomics' reduction meets them). The result
    is ``acc = acc + value`` entry after entry, the sequential sum numpy computes when it reduces pyradiomics' dense
    arrays. Step r adds the r-th entry of every group at once, from a zero-padded (longest, groups) table filled in
    the entries' order (cache-friendly; used when padding costs little), or else from the entries permuted once so
    that, groups kept longest first, each step is a contiguous slice.
    """

    def __init__(self, gid: np.ndarray, n_groups: int):
        self.n = n_groups
        counts = np.bincount(gid, minlength=n_groups)
        self.longest = int(counts.max()) if gid.size else 0
        rank = iota(gid.size) - np.repeat(np.cumsum(counts) - counts, counts)
        self.padded = n_groups * self.longest <= 3 * gid.size + 4096
        if self.padded:
            self.cells = rank * n_groups + gid  # flat index in the (longest, groups) table
            return
        by_length = np.argsort(-counts, kind="stable")
        self.active = by_length[:np.count_nonzero(counts)]
        histogram = np.bincount(counts[self.active], minlength=self.longest + 1)
        widths = np.cumsum(histogram[::-1])[::-1][1:]  # groups with more than r entries, r = 0 .. longest-1
        offsets = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.intp)
        position = np.empty(n_groups, np.intp)
        position[self.active] = iota(self.active.size)
        self.take = np.empty(gid.size, np.intp)
        self.take[offsets[rank] + position[gid]] = iota(gid.size)
        self.blocks = [(int(o), int(w)) for o, w in zip(offsets, widths)]

    def _reduce(self, values: np.ndarray, ufunc, pad: float) -> np.ndarray:
        out = np.full(values.shape[:-1] + (self.n,), 0.0)
        if not self.longest:
            return out
        if self.padded:
            rows = values.reshape(-1, values.shape[-1])
            table = np.full((rows.shape[0], self.longest, self.n), pad)
            for row, table_row in zip(rows, table):
                table_row.reshape(-1)[self.cells] = row
            acc = table[:, 0].copy()
            for r in range(1, self.longest):
                ufunc(acc, table[:, r], out=acc)
            return acc.reshape(values.shape[:-1] + (self.n,))
        ordered = values[..., self.take]
        acc = ordered[..., :self.active.size].copy()
        for offset, width in self.blocks[1:]:
            ufunc(acc[..., :width], ordered[..., offset:offset + width], out=acc[..., :width])
        out[..., self.active] = acc
        return out

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums of ``values`` (entries on the last axis: (n_entries,) or (n_terms, n_entries)); 0 for an
        empty group."""
        return self._reduce(values, np.add, 0.0)

    def max(self, values: np.ndarray) -> np.ndarray:
        """Per-group maxima of positive ``values`` (0 for an empty group)."""
        return self._reduce(values, np.maximum, 0.0)


def runs(keys: np.ndarray):
    """Start index of each run of equal values in a sorted array, and the run lengths."""
    if keys.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return starts, np.diff(np.append(starts, keys.size))



def memory_order(array: np.ndarray) -> list[int]:
    """Axes of length > 1 from the outermost (largest stride) to the innermost."""
    axes = [a for a in range(array.ndim) if array.shape[a] > 1]
    return sorted(axes, key=lambda a: -abs(array.strides[a]))


@functools.lru_cache(maxsize=None)
def layouts(levels_kept: int, levels_empty: int, angles_kept: int, angles_empty: int, symmetric: bool) -> dict:
    """How numpy lays out and reduces pyradiomics' dense GLCM arrays.

    ``numpy.delete`` (fancy indexing) and broadcasting leave pyradiomics' arrays in memory orders that depend on how
    many grey levels and angles were deleted (none, one, several), and numpy adds an array's elements in memory order.
    So we run pyradiomics' own expressions on a two-voxel stand-in with the same deletion pattern and read, for every
    array summed over (i, j), whether the sum runs row-major (i outer), and for every per-angle array averaged over
    the angles, whether voxels or angles are outer in memory. Returns {"row": {term: bool}, "fortran": {feature:
    bool}, "P": pyradiomics' memory order of P's axes, "sparse": bool}; ``sparse`` is False when numpy would sum
    pairwise over grey levels (a reduced axis innermost): our sequential sums cannot follow, pyradiomics' own feature
    code then runs on dense matrices of the same layout (``_dense_features``).
    """
    n, ng, na = 2, levels_kept + levels_empty, angles_kept + angles_empty
    P = np.ones((n, ng, ng, na))  # calculate_glcm's C-contiguous output
    empty_levels = np.array(list(range(levels_kept + 1, ng + 1)), dtype=int)
    P = np.delete(P, empty_levels - 1, 1)
    P = np.delete(P, empty_levels - 1, 2)
    if symmetric:
        P += np.transpose(P, (0, 2, 1, 3)).copy()
    sumP = np.sum(P, (1, 2))
    if P.shape[3] > 1:
        empty_angles = np.where(np.arange(na) >= angles_kept)
        if len(empty_angles[0]) > 0:
            P = np.delete(P, empty_angles, 3)
            sumP = np.delete(sumP, empty_angles, 1)
    P /= sumP[:, None, None, :]
    Ng = levels_kept
    grey = np.arange(1, Ng + 1, dtype="float")
    i, j = np.meshgrid(grey, grey, indexing="ij", sparse=True)
    px, py = P.sum(2, keepdims=True), P.sum(1, keepdims=True)
    ux = np.sum(i[None, :, :, None] * P, (1, 2), keepdims=True)
    uy = np.sum(j[None, :, :, None] * P, (1, 2), keepdims=True)
    summed = {  # arrays pyradiomics sums over axes (1, 2)
        "ux": i[None, :, :, None] * P, "uy": j[None, :, :, None] * P, "ac": P * (i * j)[None, :, :, None],
        "cp": P * (((i + j)[None, :, :, None] - ux - uy) ** 4), "cs": P * (((i + j)[None, :, :, None] - ux - uy) ** 3),
        "ct": P * (((i + j)[None, :, :, None] - ux - uy) ** 2), "cont": P * ((np.abs(i - j))[None, :, :, None] ** 2),
        "sx": P * ((i[None, :, :, None] - ux) ** 2), "sy": P * ((j[None, :, :, None] - uy) ** 2),
        "corm": P * (i[None, :, :, None] - ux) * (j[None, :, :, None] - uy), "hxy": P * np.log2(P + EPS),
        "ene": P ** 2, "hxy1": P * np.log2(px * py + EPS), "hxy2": (px * py) * np.log2(px * py + EPS),
    }
    row, sparse = {}, angles_kept >= 2  # with 0 or 1 angle left numpy reduces other shapes: dense path
    for term, array in summed.items():
        order = memory_order(array)
        sparse = sparse and not (order and order[-1] in (1, 2))
        row[term] = order.index(1) < order.index(2) if 1 in order and 2 in order else True
    singles = [(P, 2), (P, 1), (px * np.log2(px + EPS), 1), (py * np.log2(py + EPS), 2)]
    singles += [(P[:, np.abs(i - j) == k, :], 1) for k in (0, 1)] + [(P[:, i + j == k, :], 1) for k in (2, 3)]
    for array, axis in singles:
        order = memory_order(array)
        sparse = sparse and not (order and order[-1] == axis)
    HXY = (-1) * np.sum(summed["hxy"], (1, 2))
    HX = (-1) * np.sum((px * np.log2(px + EPS)), (1, 2))
    HY = (-1) * np.sum((py * np.log2(py + EPS)), (1, 2))
    HXY1 = (-1) * np.sum(summed["hxy1"], (1, 2))
    HXY2 = (-1) * np.sum(summed["hxy2"], (1, 2))
    sigx = np.sum(summed["sx"], (1, 2), keepdims=True) ** 0.5
    sigy = np.sum(summed["sy"], (1, 2), keepdims=True) ** 0.5
    corm = np.sum(summed["corm"], (1, 2), keepdims=True)
    finals = {name: np.sum(summed[term], (1, 2)) for name, term in (
        ("Autocorrelation", "ac"), ("ClusterProminence", "cp"), ("ClusterShade", "cs"), ("ClusterTendency", "ct"),
        ("Contrast", "cont"), ("JointEnergy", "ene"), ("SumSquares", "sx"))}
    finals.update(JointAverage=ux, Correlation=corm / (sigx * sigy + EPS),
                  JointEntropy=HXY, MaximumProbability=np.amax(P, (1, 2)), Imc1=HXY - HXY1,
                  Imc2=(1 - np.e ** (-2 * (HXY2 - HXY))) ** 0.5, Imc1_div=np.fmax(HX, HY))
    Q = ((P[:, :, None, 0, :] * P[:, None, :, 0, :]) / (px[:, :, None, 0, :] * py[:, None, :, 0, :] + EPS))
    for gl in range(1, P.shape[1]):
        Q += ((P[:, :, None, gl, :] * P[:, None, :, gl, :]) / (px[:, :, None, 0, :] * py[:, None, :, gl, :] + EPS))
    eigen = np.linalg.eigvals(Q.transpose((0, 3, 1, 2)))  # its output follows Q's layout
    eigen.sort()
    finals["MCC"] = np.sqrt(eigen[:, :, -1])
    pxSuby = np.array([np.sum(P[:, np.abs(i - j) == k, :], 1) for k in np.arange(0, Ng, dtype="float")])
    pxSuby = pxSuby.transpose((1, 0, 2))
    finals["Difference"] = np.sum((np.arange(0, Ng, dtype="float")[None, :, None] * pxSuby), 1)
    fortran = {}
    for name, array in finals.items():
        axis = 3 if array.ndim == 4 else 1
        strides = abs(array.strides[0]), abs(array.strides[axis])
        fortran[name] = array.shape[0] > 1 and array.shape[axis] > 1 and strides[0] < strides[1]
    return {"row": row, "fortran": fortran, "P": tuple(np.argsort([-abs(s) for s in P.strides], kind="stable")),
            "sparse": sparse}
