"""Common head-and-neck dose constraints and the DVH metrics that check them.

Plan-quality goals as they are commonly used for conventionally fractionated head-and-neck radiotherapy (about
2 Gy per fraction), from QUANTEC (Marks et al., IJROBP 76(3) Suppl., 2010) and the RTOG head-and-neck protocols
(e.g. RTOG 0615/1016); clinics use their own variants, so these are a first look, not a plan check:

- SpinalCord near-maximum (D0.03cc) <= 45 Gy; Brainstem D0.03cc <= 54 Gy; Bone_Mandible D0.03cc <= 70 Gy;
- Parotid_L / Parotid_R mean <= 26 Gy (per gland; protocols ask it of at least one);
- Larynx mean <= 44 Gy; Esophagus mean <= 34 Gy;
- every target: D95% >= 95 % of its prescription; the highest-dose target: D2% <= 107 % of its prescription.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rtrai.dose.dvh import DoseSamples, metric

SOURCE = "QUANTEC 2010 / RTOG head-and-neck protocols (conventional fractionation)"

# structure -> list of (metric, "<=", limit in Gy)
OAR_CONSTRAINTS: dict[str, list[tuple[str, str, float]]] = {
    "SpinalCord": [("D0.03cc", "<=", 45.0)],
    "Brainstem": [("D0.03cc", "<=", 54.0)],
    "Bone_Mandible": [("D0.03cc", "<=", 70.0)],
    "Parotid_L": [("Dmean", "<=", 26.0)],
    "Parotid_R": [("Dmean", "<=", 26.0)],
    "Larynx": [("Dmean", "<=", 44.0)],
    "Esophagus": [("Dmean", "<=", 34.0)],
}
TARGET_COVERAGE = ("D95%", ">=", 0.95)  # fraction of the prescription
TARGET_HOTSPOT = ("D2%", "<=", 1.07)


@dataclass
class ConstraintResult:
    structure: str
    metric: str
    value_gy: float
    goal: str  # e.g. "<= 45 Gy" or ">= 66.5 Gy (95 % of 70 Gy)"
    limit_gy: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _check(structure, name, op, limit, samples, goal=None) -> ConstraintResult | None:
    value = metric(samples, name)
    if value != value:  # NaN: empty structure
        return None
    passed = value <= limit + 1e-9 if op == "<=" else value >= limit - 1e-9
    return ConstraintResult(structure, name, float(value), goal or f"{op} {limit:g} Gy", float(limit), bool(passed))


def evaluate_constraints(samples: dict[str, DoseSamples], prescription: dict[str, float | None]
                         ) -> list[ConstraintResult]:
    """The constraints above for the structures present (``prescription``: target -> Gy, None when unknown)."""
    out = []
    for name, rules in OAR_CONSTRAINTS.items():
        if name in samples:
            out += [r for r in (_check(name, m, op, lim, samples[name]) for m, op, lim in rules) if r]
    levels = {t: rx for t, rx in prescription.items() if rx and t in samples}
    top = max(levels.values(), default=None)
    for target, rx in sorted(levels.items(), key=lambda kv: -kv[1]):
        m, op, fraction = TARGET_COVERAGE
        result = _check(target, m, op, fraction * rx, samples[target],
                        f"{op} {fraction * rx:.1f} Gy ({fraction:.0%} of {rx:g} Gy)")
        out += [result] if result else []
        if rx == top:
            m, op, fraction = TARGET_HOTSPOT
            result = _check(target, m, op, fraction * rx, samples[target],
                            f"{op} {fraction * rx:.1f} Gy ({fraction:.0%} of {rx:g} Gy)")
            out += [result] if result else []
    return out
