"""pyradiomics' ``glcm`` class in voxel mode, vectorised over voxels (same values, bit for bit).

pyradiomics' voxel mode builds, for every ROI voxel, a dense grey-level x grey-level x angle co-occurrence matrix and
evaluates each feature on the whole (voxels, Ng, Ng, angles) array. Here each kernel's co-occurring pairs are gathered
with numpy for thousands of voxels at once and only the non-zero matrix entries are kept, summed in numpy's order
(:mod:`rtrai.radiomics.voxel_numpy_order`); per-angle values go through the same ``nanmean`` calls on arrays laid out
the same way. Where numpy would sum pairwise over grey levels (rare layouts), and for MCC (eigenvalues of dense
matrices), pyradiomics' own GLCM feature code runs on this chunk's dense matrices, built with pyradiomics' values and
layout (``_dense_features``). Discretisation (``binImage``), kernel offsets and angles (``generate_angles``) are
pyradiomics' own functions, and its voxel-mode rules are kept: angles without any pair in the whole ROI are dropped,
an angle empty in one kernel is NaN and left out of the mean (but makes Joint Average NaN), and MCC fails -- map left
at ``initValue`` -- as soon as one kernel has an empty angle.
"""

from __future__ import annotations

import numpy as np

from rtrai.radiomics import voxel_plan
from rtrai.radiomics.voxel_numpy_order import Groups, iota, layouts, runs
from rtrai.radiomics.voxel_plan import EPS, Region, chunk_bounds, flat_offsets, pad_constant

# Dense (voxels, Ng, Ng, angles) matrices (MCC, rare layouts: see _dense_features), elements per chunk.
DENSE_CHUNK_ELEMENTS = 4_000_000


class _Kernel:
    """Co-occurring voxel pairs of each angle inside a kernel: offsets o (from the kernel centre) with o and o + angle
    both inside the kernel box (pyradiomics' set_bb + calculate_glcm)."""

    def __init__(self, angles: np.ndarray, radius: int, s: dict, padded_shape):
        extent = np.full(3, radius)
        if s["force2D"]:
            extent[s["force2Ddimension"]] = 0
        grid = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in extent], indexing="ij")).reshape(3, -1)
        self.pairs = []
        for angle in angles:
            inside = np.all(np.abs(grid + angle[:, None]) <= extent[:, None], axis=0)
            self.pairs.append((flat_offsets(grid[:, inside], padded_shape),
                               int(flat_offsets(angle[:, None], padded_shape)[0])))
        self.per_voxel = max(1, sum(o.size for o, _ in self.pairs))


def _has_pairs(kernel: _Kernel, mask: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(voxel, angle) -> does the kernel hold at least one co-occurring pair along that angle."""
    found = np.zeros((centres.size, len(kernel.pairs)), bool)
    for b0, b1 in chunk_bounds(centres.size, kernel.per_voxel):
        for a, (offsets, step) in enumerate(kernel.pairs):
            if offsets.size:
                first = centres[b0:b1, None] + offsets[None, :]
                found[b0:b1, a] = np.any(mask[first] & mask[first + step], axis=1)
    return found


def _glcm_batch(names, levels, n_max, kernel, angle_index, gray, mask, centres, layout, mcc_ok, s):
    """Feature values of the voxels ``centres`` over the kept angles ``angle_index`` (None: the feature failed)."""
    n, n_angles, n_levels = centres.size, len(angle_index), levels.size
    segments = n * n_angles
    per_level = n_levels * n_levels
    keys = []
    for column, a in enumerate(angle_index):
        offsets, step = kernel.pairs[a]
        if not offsets.size:
            continue
        first = centres[:, None] + offsets[None, :]
        second = first + step
        rows, cols = np.nonzero(mask[first] & mask[second])
        gi, gj = gray[first[rows, cols]], gray[second[rows, cols]]
        segment = (rows * n_angles + column) * per_level
        keys.append(segment + gi * n_levels + gj)
        if s["symmetricalGLCM"]:
            keys.append(segment + gj * n_levels + gi)
    # non-zero matrix entries, sorted by (voxel, angle) segment, then row-major (i, j)
    keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    starts, counts = runs(keys)
    unique = keys[starts]
    seg = unique // per_level
    ci = (unique % per_level) // n_levels
    cj = unique % n_levels
    count = counts.astype(np.float64)
    total = np.bincount(seg, weights=count, minlength=segments)  # integers: exact
    empty = total == 0
    p = count / total[seg]
    if not layout["sparse"]:
        return _dense_features(names, seg, ci, cj, p, empty, n, n_angles, levels, n_max, layout, mcc_ok, s)
    iv, jv = levels[ci], levels[cj]
    need = set(names)
    row, fortran = layout["row"], layout["fortran"]
    by_segment = Groups(seg, segments)
    column_order = []

    def col_perm():
        if not column_order:
            # (segment, j, i): column-major within each segment
            column_order.append(np.argsort((seg * n_levels + cj) * n_levels + ci))
        return column_order[0]

    def seg_sums(terms: dict) -> dict:
        """Per-segment sums of each term, in the order numpy meets pyradiomics' dense array of that term."""
        out = {}
        for major in (True, False):
            labels = [label for label in terms if row[label] == major]
            if not labels:
                continue
            stack = np.stack([terms[label] for label in labels])
            sums = by_segment.sum(stack if major else stack[:, col_perm()])
            for k, label in enumerate(labels):
                values = sums[k].copy()
                values[empty] = np.nan  # pyradiomics: 0 / 0 for an empty angle of this voxel
                out[label] = values
        return out

    def finish(values):
        values = np.asarray(values, dtype=np.float64).copy()
        values[empty] = np.nan
        return values

    def per_angle(values, name):
        array = values.reshape(n, n_angles)
        return np.asfortranarray(array) if fortran.get(name) else np.ascontiguousarray(array)

    def nanmean(values, name):
        return np.nanmean(per_angle(values, name), 1)

    sums = seg_sums({"ux": iv * p, "uy": jv * p})
    ux, uy = sums["ux"], sums["uy"]
    uxe, uye = ux[seg], uy[seg]
    terms = {}
    if "Autocorrelation" in need:
        terms["ac"] = p * (iv * jv)
    if "ClusterProminence" in need:
        terms["cp"] = p * ((((iv + jv) - uxe) - uye) ** 4)
    if "ClusterShade" in need:
        terms["cs"] = p * ((((iv + jv) - uxe) - uye) ** 3)
    if "ClusterTendency" in need:
        terms["ct"] = p * ((((iv + jv) - uxe) - uye) ** 2)
    if "Contrast" in need:
        terms["cont"] = p * (np.abs(iv - jv) ** 2)
    if need & {"Correlation", "SumSquares"}:
        terms["sx"] = p * ((iv - uxe) ** 2)
    if "Correlation" in need:
        terms["sy"] = p * ((jv - uye) ** 2)
        terms["corm"] = p * (iv - uxe) * (jv - uye)
    if need & {"JointEntropy", "Imc1", "Imc2"}:
        terms["hxy"] = p * np.log2(p + EPS)
    if "JointEnergy" in need:
        terms["ene"] = p ** 2
    marginals = None
    if need & {"Imc1", "Imc2"} or (mcc_ok and "MCC" in need):
        # px(i): sum over j of P(i, j) (entries of a (segment, i) are contiguous, in j order); py(j) likewise in i order
        row_key = seg * n_levels + ci
        row_starts, _ = runs(row_key)
        px_values = Groups(np.repeat(iota(row_starts.size), np.diff(np.append(row_starts, seg.size))),
                            row_starts.size).sum(p)
        order = col_perm()
        col_key = (seg * n_levels + cj)[order]
        col_starts, _ = runs(col_key)
        py_values = Groups(np.repeat(iota(col_starts.size), np.diff(np.append(col_starts, seg.size))),
                            col_starts.size).sum(p[order])
        px_key, py_key = row_key[row_starts], col_key[col_starts]
        px_at = px_values[np.searchsorted(px_key, seg * n_levels + ci)]
        py_at = py_values[np.searchsorted(py_key, seg * n_levels + cj)]
        if "Imc1" in need:
            terms["hxy1"] = p * np.log2(px_at * py_at + EPS)
        marginals = (px_values, px_key // n_levels, py_values, py_key // n_levels)
    sums.update(seg_sums(terms))
    out = {}
    if "Autocorrelation" in need:
        out["Autocorrelation"] = nanmean(sums["ac"], "Autocorrelation")
    if "JointAverage" in need:
        out["JointAverage"] = per_angle(ux, "JointAverage").mean(1)
    for name, label in (("ClusterProminence", "cp"), ("ClusterShade", "cs"), ("ClusterTendency", "ct"),
                        ("Contrast", "cont"), ("JointEnergy", "ene"), ("SumSquares", "sx")):
        if name in need:
            out[name] = nanmean(sums[label], name)
    if "JointEntropy" in need:
        out["JointEntropy"] = nanmean((-1) * sums["hxy"], "JointEntropy")
    if "Correlation" in need:
        sigx, sigy = sums["sx"] ** 0.5, sums["sy"] ** 0.5
        corr = sums["corm"] / (sigx * sigy + EPS)
        corr[sigx * sigy == 0] = 1
        out["Correlation"] = nanmean(corr, "Correlation")
    if "MaximumProbability" in need:
        out["MaximumProbability"] = nanmean(finish(by_segment.max(p)), "MaximumProbability")
    if need & {"DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm", "Idmn", "Idn",
               "InverseVariance"}:
        # p_{x-y}(k): the entries of (segment, k = |i - j|) in row-major order; then over k, ascending
        kd = np.abs(iv - jv).astype(np.int64)
        order = np.argsort(seg * (n_max + 1) + kd, kind="stable")
        diff_key = (seg * (n_max + 1) + kd)[order]
        d_starts, d_counts = runs(diff_key)
        pxs = Groups(np.repeat(iota(d_starts.size), d_counts), d_starts.size).sum(p[order])
        d_seg = seg[order][d_starts]
        k = kd[order][d_starts].astype(np.float64)
        per_seg = Groups(d_seg, segments)
        diffavg = finish(per_seg.sum(k * pxs))
        stack = np.stack([pxs * np.log2(pxs + EPS), pxs * ((k - diffavg[d_seg]) ** 2), pxs / (1 + (k ** 2)),
                          pxs / (1 + ((k ** 2) / (n_max ** 2))), pxs / (1 + k), pxs / (1 + (k / n_max))])
        sums_k = per_seg.sum(stack)
        difent, diffvar, idm, idmn, id_, idn = (finish(sums_k[c]) for c in range(6))
        difent = (-1) * difent
        nonzero_k = k >= 1
        inv = Groups(d_seg[nonzero_k], segments).sum(pxs[nonzero_k] / k[nonzero_k] ** 2)
        if n_levels > 1:  # one grey level: no (i, j) with |i - j| >= 1, pyradiomics sums nothing: 0, never NaN
            inv = finish(inv)
        for name, array in (("DifferenceAverage", diffavg), ("DifferenceEntropy", difent),
                            ("DifferenceVariance", diffvar), ("Id", id_), ("Idm", idm), ("Idmn", idmn),
                            ("Idn", idn), ("InverseVariance", inv)):
            if name in need:
                out[name] = nanmean(array, "Difference")
    if need & {"SumAverage", "SumEntropy"}:
        ks = (iv + jv).astype(np.int64)
        order = np.argsort(seg * (2 * n_max + 1) + ks, kind="stable")
        sum_key = (seg * (2 * n_max + 1) + ks)[order]
        s_starts, s_counts = runs(sum_key)
        pxa = Groups(np.repeat(iota(s_starts.size), s_counts), s_starts.size).sum(p[order])
        s_seg = seg[order][s_starts]
        k = ks[order][s_starts].astype(np.float64)
        sums_k = Groups(s_seg, segments).sum(np.stack([k * pxa, pxa * np.log2(pxa + EPS)]))
        if "SumAverage" in need:
            out["SumAverage"] = nanmean(finish(sums_k[0]), "Difference")
        if "SumEntropy" in need:
            out["SumEntropy"] = nanmean((-1) * finish(sums_k[1]), "Difference")
    if marginals is not None and need & {"Imc1", "Imc2"}:
        px_values, px_seg, py_values, py_seg = marginals
        hx = (-1) * finish(Groups(px_seg, segments).sum(px_values * np.log2(px_values + EPS)))
        hy = (-1) * finish(Groups(py_seg, segments).sum(py_values * np.log2(py_values + EPS)))
        hxy = (-1) * sums["hxy"]
        if "Imc1" in need:
            hxy1 = (-1) * sums["hxy1"]
            div = np.fmax(hx, hy)
            imc1 = hxy - hxy1
            imc1[div != 0] /= div[div != 0]
            imc1[div == 0] = 0
            out["Imc1"] = nanmean(imc1, "Imc1")
        if "Imc2" in need:
            # every (i, j) with px(i) > 0 and py(j) > 0 of a segment, row- or column-major as numpy adds them
            outer_seg, inner_seg = (px_seg, py_seg) if row["hxy2"] else (py_seg, px_seg)
            inner_count = np.bincount(inner_seg, minlength=segments)
            inner_start = np.cumsum(inner_count) - inner_count
            reps = inner_count[outer_seg]
            outer_of = np.repeat(iota(outer_seg.size), reps)
            within = iota(outer_of.size) - np.repeat(np.cumsum(reps) - reps, reps)
            inner_of = inner_start[outer_seg[outer_of]] + within
            product = (px_values[outer_of] * py_values[inner_of] if row["hxy2"]
                       else px_values[inner_of] * py_values[outer_of])
            hxy2 = (-1) * finish(Groups(outer_seg[outer_of], segments).sum(product * np.log2(product + EPS)))
            imc2 = (1 - np.e ** (-2 * (hxy2 - hxy))) ** 0.5
            imc2[hxy2 == hxy] = 0
            out["Imc2"] = nanmean(imc2, "Imc2")
    if "MCC" in need:
        out["MCC"] = _mcc_q(seg, ci, cj, p, px_at, py_at, col_perm(), n, n_angles, n_levels) if mcc_ok else None
    return out


def _mcc_q(seg, ci, cj, p, px_at, py_at, column_order, n, n_angles, n_levels):
    """pyradiomics' MCC matrices Q(i, j) = sum over k of p(i, k) p(j, k) / (px(i) py(k) + eps), added k after k (its
    loop), from the non-zero terms only; returned as _MCC's eigenvalues. Only reached when no kernel has an empty
    angle (otherwise pyradiomics' eigvals meets a NaN and the feature fails)."""
    # entries by (segment, k = j, i): the non-zero rows of each column k
    seg_k, k_level, rows, values, px_rows, py_k = (a[column_order] for a in (seg, cj, ci, p, px_at, py_at))
    column_key = seg_k * n_levels + k_level
    starts, counts = runs(column_key)
    # every (i1, i2) pair of rows within a column, in (segment, k, i1, i2) order
    reps = np.repeat(counts, counts)
    first = np.repeat(iota(seg_k.size), reps)
    column_start = np.repeat(starts, counts * counts)
    within = iota(first.size) - np.repeat(np.cumsum(reps) - reps, reps)
    second = column_start + within
    term = (values[first] * values[second]) / (px_rows[first] * py_k[first] + EPS)
    q_key = (seg_k[first] * n_levels + rows[first]) * n_levels + rows[second]
    order = np.argsort(q_key, kind="stable")  # k order kept within each Q(i, j)
    q_sorted = q_key[order]
    q_starts, q_counts = runs(q_sorted)
    q = Groups(np.repeat(iota(q_starts.size), q_counts), q_starts.size).sum(term[order])
    cell = q_sorted[q_starts]
    segment, i_j = cell // (n_levels * n_levels), cell % (n_levels * n_levels)
    dense = np.zeros((n, n_angles, n_levels, n_levels))  # pyradiomics' Q.transpose((0, 3, 1, 2)), same values
    dense[segment // n_angles, segment % n_angles, i_j // n_levels, i_j % n_levels] = q
    return _MCC.eigen(dense)


class _MCC:
    """pyradiomics' last MCC steps over the whole batch: ``eigvals`` of all voxels' Q matrices at once returns real
    eigenvalues only when all of them are real, and the square root then takes the real or the complex branch. So
    each chunk keeps its second-largest eigenvalues as complex numbers, and the batch decides."""

    @staticmethod
    def eigen(q: np.ndarray):
        """Q stacked as (voxels, angles, Ng, Ng) -> (second-largest eigenvalues (complex), any complex eigenvalue)."""
        eigen = np.linalg.eigvals(q)
        is_complex = np.iscomplexobj(eigen)
        eigen = eigen.astype(complex)  # exact: real eigenvalues are complex ones with a zero imaginary part
        eigen.sort()
        if eigen.shape[2] < 2:
            return np.zeros(eigen.shape[:2], complex), is_complex
        return eigen[:, :, -2], is_complex

    @staticmethod
    def values(parts: list, n_levels: int, fortran: bool) -> np.ndarray:
        second = np.concatenate([s for s, _ in parts])
        if n_levels < 2:
            return np.ones(second.shape[0])  # pyradiomics returns 1 (flat region)
        if not any(c for _, c in parts):
            second = second.real.copy()
        mcc = np.sqrt(np.asfortranarray(second) if fortran else second)  # laid out as pyradiomics' MCC array
        return np.nanmean(mcc, 1).real


def _dense_features(names, seg, ci, cj, p, empty, n, n_angles, levels, n_max, layout, mcc_ok, s):
    """pyradiomics' own GLCM feature code on this chunk's dense matrices, built with pyradiomics' values (NaN for an
    empty angle) and memory layout, so that numpy reduces them exactly as in pyradiomics. Used for MCC (eigenvalues of
    dense matrices anyway) and for the layouts where numpy sums pairwise over grey levels."""
    import logging

    from radiomics.glcm import RadiomicsGLCM

    n_levels = levels.size
    order = layout["P"]
    shape = (n, n_levels, n_levels, n_angles)
    dense = np.zeros([shape[a] for a in order]).transpose(np.argsort(order))
    if n_angles:
        dense[seg // n_angles, ci, cj, seg % n_angles] = p
        gone = np.flatnonzero(empty)
        dense[gone // n_angles, :, :, gone % n_angles] = np.nan
    glcm = RadiomicsGLCM.__new__(RadiomicsGLCM)  # a stand-in holding our matrices: no image, no C extension call
    glcm.logger = logging.getLogger("radiomics.glcm")
    glcm.settings, glcm.symmetricalGLCM, glcm.weightingNorm = dict(s), s["symmetricalGLCM"], None
    glcm.coefficients = {"Ng": n_max, "grayLevels": levels.astype(np.int64)}
    glcm.P_glcm = dense
    glcm._calculateCoefficients()  # noqa: SLF001 - pyradiomics' own coefficients of our matrix
    out = {}
    for name in names:
        if name == "MCC":
            out[name] = _dense_mcc_q(glcm) if mcc_ok else None
            continue
        try:
            out[name] = np.broadcast_to(getattr(glcm, f"get{name}FeatureValue")(), (n,))
        except Exception:  # noqa: BLE001  pyradiomics then leaves the map at initValue
            out[name] = None
    return out


def _dense_mcc_q(glcm):
    """getMCCFeatureValue's matrices (pyradiomics' code), returned as _MCC's eigenvalues."""
    P, px, py = glcm.P_glcm, glcm.coefficients["px"], glcm.coefficients["py"]
    Q = ((P[:, :, None, 0, :] * P[:, None, :, 0, :]) / (px[:, :, None, 0, :] * py[:, None, :, 0, :] + EPS))
    for gl in range(1, P.shape[1]):
        Q += ((P[:, :, None, gl, :] * P[:, None, :, gl, :]) / (px[:, :, None, 0, :] * py[:, None, :, gl, :] + EPS))
    return _MCC.eigen(Q.transpose((0, 3, 1, 2)))


def glcm_maps(region: Region, names: list[str], s: dict, coords: np.ndarray) -> dict[str, np.ndarray | None]:
    """Feature values per ROI voxel (None: the feature failed in pyradiomics, map left at initValue)."""
    from radiomics import cMatrices, imageoperations

    radius = s["kernelRadius"]
    kernel_mask = region.kernel_mask
    binned, _ = imageoperations.binImage(region.array, kernel_mask, **s)
    levels_int = np.unique(binned[kernel_mask])
    n_max = int(np.max(levels_int))
    levels = levels_int.astype("float")
    gray = np.full(binned.shape, -1, np.int64)
    gray[kernel_mask] = np.searchsorted(levels_int, binned[kernel_mask])
    gray = pad_constant(gray, radius, -1).ravel()
    mask = pad_constant(kernel_mask, radius, False).ravel()
    angles = cMatrices.generate_angles(np.array(region.roi.shape), np.array(s["distances"]), False, s["force2D"],
                                       s["force2Ddimension"])
    padded_shape = tuple(d + 2 * radius for d in region.roi.shape)
    kernel = _Kernel(angles, radius, s, padded_shape)
    centres = np.ravel_multi_index(tuple(coords + radius), padded_shape)
    results = {name: np.empty(centres.size) for name in names}
    failed = set()
    mcc_chunk = max(2, DENSE_CHUNK_ELEMENTS // (levels.size * levels.size * len(angles)))
    n_voxels = centres.size
    found = _has_pairs(kernel, mask, centres)
    # pyradiomics drops the angles without any pair in the whole batch (all ROI voxels here)
    keep = np.flatnonzero(found.any(0)) if len(angles) > 1 else np.arange(len(angles))
    layout = layouts(min(levels.size, 3), min(n_max - levels.size, 2), min(keep.size, 3),
                      min(len(angles) - keep.size, 2), s["symmetricalGLCM"])
    mcc_ok = "MCC" in names and bool(np.all(found[:, keep]))
    step = max(2, voxel_plan.CHUNK_ENTRIES // (2 * kernel.per_voxel))
    if mcc_ok or not layout["sparse"]:
        step = min(step, mcc_chunk)  # dense matrices in this chunk
    bounds = list(range(0, n_voxels, step)) + [n_voxels]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]  # no single-voxel chunk: numpy lays out a one-voxel stack differently
    eigen_parts = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        values = _glcm_batch(names, levels, n_max, kernel, keep, gray, mask, centres[c0:c1], layout, mcc_ok, s)
        for name in names:
            if values[name] is None:
                failed.add(name)
            elif name == "MCC":
                eigen_parts.append(values[name])
            else:
                results[name][c0:c1] = values[name]
    if "MCC" in names and mcc_ok and "MCC" not in failed:
        results["MCC"] = _MCC.values(eigen_parts, levels.size, layout["fortran"]["MCC"])
    elif "MCC" in names:
        failed.add("MCC")  # pyradiomics' eigvals refuses the NaN of an empty angle: the whole batch fails
    for name in failed:
        results[name] = None  # only MCC fails; pyradiomics leaves the whole map at initValue
    return results


# --------------------------------------------------------------------------------------------------------------------
