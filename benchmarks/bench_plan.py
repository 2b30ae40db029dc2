"""`rtrai plan` and `rtrai dose qa` on OpenKBP validation patients: speed, plan quality, QA margins.

Goals (issue 23): one OpenKBP case planned in <= 3 minutes on 2 cores with peak memory <= 3 GiB; on 5 validation
patients planned from the shipped model's prediction, mean |plan - predicted| inside the possible-dose mask <= 1.5 Gy,
PTV70 D95 >= 95 % of 70 Gy and no OAR mean more than 2 Gy above its prediction; the QA margin that flags fewer than
5 % of the validation patients' own plans.

    python benchmarks/bench_plan.py speed [PATIENT]          rtrai's settings vs pyRadPlan's own example settings
    python benchmarks/bench_plan.py validation [PATIENT ...]  plan quality (default pt_201 pt_202 pt_203 pt_204 pt_206;
                                                              --beams N: other than rtrai's default)
    python benchmarks/bench_plan.py qa-margins                how often each margin flags the 33 reference plans

Wall times on a shared machine vary with its load; CPU times (this process) are given beside them. Predictions come
from the shipped model (`hn-dose-openkbp`); `--predictions DIR` reuses `rtrai dose predict` outputs
(DIR/pt_N/Dose.nrrd).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats"
FIVE = ("pt_201", "pt_202", "pt_203", "pt_204", "pt_206")  # pt_205 is incomplete in the shared copy
MARGINS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def prediction(case, folder: Path | None, predictor_box: list):
    from rtrai.io.images import read_image

    if folder is not None and (folder / case.patient_id / "Dose.nrrd").is_file():
        return read_image(folder / case.patient_id / "Dose.nrrd")
    if not predictor_box:
        from rtrai.dose.inference import DosePredictor

        predictor_box.append(DosePredictor("hn-dose-openkbp", "cpu"))
    return predictor_box[0].predict(case)


def validation(patients: list[str], predictions: Path | None, priorities=None, beams: int | None = None) -> int:
    from rtrai.dose.qa import structure_metrics
    from rtrai.io.openkbp import read_openkbp
    from rtrai.plan.engine import DEFAULT_BEAMS
    from rtrai.plan.mimicking import Priorities, plan_case

    priorities, beams = priorities or Priorities(), beams or DEFAULT_BEAMS
    print(f"priorities: {priorities}; {beams} beams")
    print("patient  MAE_plan_pred_Gy  MAE_pred_ref_Gy  PTV70_D95_plan  PTV70_D95_pred  worst_OAR_mean_excess_Gy  "
          "worst_OAR_D0.1cc_excess_Gy  matrix_s  opt_s  iterations  cpu_s  peak_GiB")
    box, summary = [], []
    for pid in patients:
        case = read_openkbp(DATA / pid)
        predicted = prediction(case, predictions, box)
        cpu = time.process_time()
        result = plan_case(case, predicted, beams=beams, priorities=priorities)
        cpu = time.process_time() - cpu
        plan, pred = sitk.GetArrayViewFromImage(result.dose), sitk.GetArrayViewFromImage(predicted)
        mask = sitk.GetArrayViewFromImage(case.possible_dose_mask).astype(bool)
        mae = float(np.abs(plan - pred)[mask].mean())
        mae_ref = float(np.abs(pred - sitk.GetArrayViewFromImage(case.dose))[mask].mean())
        mp, mq = structure_metrics(case, result.dose), structure_metrics(case, predicted)

        def worst(metric: str) -> tuple[str, float]:  # the structure whose plan exceeds its prediction most
            return max(((n, mp[(n, m)] - mq[(n, m)]) for n, m in mp if m == metric), key=lambda t: t[1])

        oar, hot = worst("Dmean"), worst("D0.1cc")
        d95 = (mp[("PTV70", "D95%")], mq[("PTV70", "D95%")])
        summary.append((mae, d95[0], oar[1]))
        print(f"{pid}  {mae:.2f}  {mae_ref:.2f}  {d95[0]:.1f}  {d95[1]:.1f}  {oar[1]:+.2f} ({oar[0]})  "
              f"{hot[1]:+.2f} ({hot[0]})  "
              f"{result.matrix_s:.0f}  {result.optimisation_s:.0f}  {result.iterations}  {cpu:.0f}  {peak_gib():.2f}",
              flush=True)
    mae, d95, oar = (np.array(v) for v in zip(*summary))
    print(f"mean MAE {mae.mean():.2f} Gy (goal <= 1.5): {'met' if mae.mean() <= 1.5 else 'NOT met'}; "
          f"PTV70 D95 >= 66.5 Gy in {int((d95 >= 66.5).sum())} of {len(d95)}; "
          f"OAR mean <= prediction + 2 Gy in {int((oar <= 2.0).sum())} of {len(oar)}")
    return 0


def qa_margins(predictions: Path | None) -> int:
    """Each validation patient's own (reference) dose as the plan, the shipped model's prediction as the prediction."""
    from rtrai.dose.qa import UNFLAGGED_METRICS, excess_gy, structure_metrics
    from rtrai.io.openkbp import read_openkbp

    box, excess = [], []  # per patient: list of (structure, metric, excess)
    patients = sorted(p for p in DATA.iterdir() if p.is_dir())
    for folder in patients:
        case = read_openkbp(folder)
        predicted = prediction(case, predictions, box)
        plan, pred = structure_metrics(case, case.dose), structure_metrics(case, predicted)
        excess.append([(n, m, excess_gy(m, plan[(n, m)], pred[(n, m)])) for (n, m) in plan])
    flaggable = [[e for n, m, e in rows if m not in UNFLAGGED_METRICS] for rows in excess]
    n_metrics = sum(len(e) for e in flaggable)
    print(f"{len(patients)} validation patients, {n_metrics} flaggable metrics (OAR Dmean, D0.1cc; target D95%, D99%;"
          " target D1% is reported, never flagged)")
    print("margin_Gy  patients_flagged  share  metrics_flagged  share")
    default, per_patient = None, None
    for margin in MARGINS:
        flagged = [sum(e > margin for e in rows) for rows in flaggable]
        patients_flagged = sum(f > 0 for f in flagged)
        share = patients_flagged / len(patients)
        print(f"{margin:g}  {patients_flagged}  {100 * share:.1f} %  {sum(flagged)}  "
              f"{100 * sum(flagged) / n_metrics:.1f} %")
        if default is None and sum(flagged) / n_metrics < 0.05:
            default = margin
        if per_patient is None and share < 0.05:
            per_patient = margin
    by_metric = {}
    for rows in excess:
        for _, m, e in rows:
            by_metric.setdefault(m, []).append(e)
    print("excess per metric (Gy): " + "; ".join(f"{m} median {np.median(v):+.2f}, 95th pct {np.percentile(v, 95):+.2f}"
                                                  for m, v in by_metric.items()))
    print(f"smallest margin flagging < 5 % of the metrics (rtrai's default): {default}; "
          f"flagging < 5 % of the patients at least once: {per_patient}")
    return 0


def speed(patient: str, predictions: Path | None) -> int:
    """rtrai's default settings (24 beams, 7 mm bixels, 6 mm grid, mimicking) against pyRadPlan's own photon example
    settings (its defaults: 5 mm bixels, 5 mm dose grid; 5 equispaced beams, squared deviation at the prescription in
    the targets and squared overdosing in the OARs, its own optimiser) on the same case."""
    from rtrai.io.openkbp import read_openkbp
    from rtrai.plan.engine import body_mask
    from rtrai.plan.mimicking import plan_case

    case = read_openkbp(DATA / patient)
    predicted = prediction(case, predictions, [])
    cpu = time.process_time()
    result = plan_case(case, predicted)
    cpu = time.process_time() - cpu
    print(f"{patient} rtrai plan: matrix {result.matrix_s:.1f} s, optimisation {result.optimisation_s:.1f} s "
          f"({result.iterations} iterations), total CPU {cpu:.1f} s, {result.influence.bixels} bixels, "
          f"{result.influence.matrix.nnz / 1e6:.1f} M matrix entries, peak {peak_gib():.2f} GiB", flush=True)

    import pyRadPlan
    from pyRadPlan import CT, PhotonPlan, StructureSet, calc_dose_influence, fluence_optimization, generate_stf
    from pyRadPlan.cst import ExternalVOI, OAR, Target
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    ct = CT(cube_hu=sitk.Cast(case.ct, sitk.sitkFloat32))
    body = sitk.GetImageFromArray(body_mask(case).astype(np.uint8))
    body.CopyInformation(case.ct)
    vois = []
    for name, mask in case.structures.items():
        if name in case.prescription:
            vois.append(Target(name=name, mask=mask, ct_image=ct,
                               objectives=[SquaredDeviation(priority=1000.0, d_ref=case.prescription[name])]))
        else:
            vois.append(OAR(name=name, mask=mask, ct_image=ct,
                            objectives=[SquaredOverdosing(priority=100.0, d_max=30.0)]))
    vois.append(ExternalVOI(name="BODY", mask=body, ct_image=ct))
    cst = StructureSet(vois=vois, ct_image=ct)
    pln = PhotonPlan(machine="Generic")
    pln.num_of_fractions = 1  # objectives in Gy of the whole course, as rtrai's
    pln.prop_stf = {"gantry_angles": list(np.linspace(0, 360, 5, endpoint=False)), "couch_angles": [0.0] * 5}
    cpu, wall = time.process_time(), time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    matrix_s = time.perf_counter() - wall
    start = time.perf_counter()
    fluence_optimization(ct, cst, stf, dij, pln)
    opt_s = time.perf_counter() - start
    cpu = time.process_time() - cpu
    nnz = dij.physical_dose.flat[0].nnz
    print(f"{patient} pyRadPlan example settings (pyRadPlan {pyRadPlan.__version__}): matrix {matrix_s:.1f} s, "
          f"optimisation {opt_s:.1f} s, total CPU {cpu:.1f} s, {dij.total_num_of_bixels} bixels, {nnz / 1e6:.1f} M "
          f"matrix entries, peak {peak_gib():.2f} GiB")
    print(f"ratio (pyRadPlan example / rtrai): matrix {matrix_s / result.matrix_s:.2f}x, "
          f"optimisation {opt_s / max(result.optimisation_s, 1e-9):.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("speed", "validation", "qa-margins"))
    parser.add_argument("patients", nargs="*")
    parser.add_argument("--predictions", type=Path, help="folder of `rtrai dose predict` outputs to reuse")
    parser.add_argument("--priorities", type=float, nargs=2, metavar=("TARGET", "OAR"),
                        help="validation: the objective's target and OAR priorities (default rtrai's)")
    parser.add_argument("--beams", type=int, help="validation: equispaced coplanar beams (default rtrai's)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: OpenKBP data not found at {DATA}")
        return 0
    if args.mode == "speed":
        return speed(args.patients[0] if args.patients else "pt_201", args.predictions)
    if args.mode == "validation":
        from rtrai.plan.mimicking import Priorities

        priorities = Priorities(*args.priorities) if args.priorities else None
        return validation(args.patients or list(FIVE), args.predictions, priorities, args.beams)
    return qa_margins(args.predictions)


if __name__ == "__main__":
    sys.exit(main())
