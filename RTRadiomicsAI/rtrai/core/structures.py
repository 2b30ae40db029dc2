"""Structure names: AAPM TG-263 as the one naming convention, with a mapping table from other conventions.

Report 263 (Mayo et al., 2018) fixes names such as ``Parotid_L`` and ``Bone_Mandible``. Inputs use many others
(OpenKBP's ``LeftParotid``, clinical ``Lt Parotid``, ``Cord``, ...); :func:`to_tg263` maps the ones we recognise and
leaves the rest unchanged, so that nothing is lost.
"""

from __future__ import annotations

import re
import unicodedata

# TG-263 name -> display colour (R, G, B in 0..1), close to the colours SlicerRT and TotalSegmentator users know.
TG263_COLORS: dict[str, tuple[float, float, float]] = {
    "Brainstem": (0.55, 0.30, 0.18),
    "SpinalCord": (1.00, 0.90, 0.20),
    "Parotid_L": (0.20, 0.80, 0.20),
    "Parotid_R": (0.10, 0.55, 0.90),
    "Esophagus": (0.80, 0.55, 0.35),
    "Larynx": (0.60, 0.20, 0.80),
    "Bone_Mandible": (0.95, 0.95, 0.80),
    "External": (0.85, 0.70, 0.60),
    "Brain": (0.98, 0.75, 0.75),
    "Eye_L": (0.20, 0.70, 1.00),
    "Eye_R": (0.20, 0.40, 1.00),
    "OpticNrv_L": (1.00, 0.60, 0.00),
    "OpticNrv_R": (1.00, 0.45, 0.00),
    "OpticChiasm": (0.90, 0.30, 0.10),
    "Glnd_Submand_L": (0.50, 0.90, 0.50),
    "Glnd_Submand_R": (0.40, 0.70, 0.90),
    "Cavity_Oral": (0.95, 0.50, 0.60),
    "Lung_L": (0.55, 0.85, 0.95),
    "Lung_R": (0.45, 0.75, 0.90),
    "Heart": (0.85, 0.15, 0.15),
    "Bone": (0.90, 0.90, 0.85),
    "PTV70": (1.00, 0.00, 0.00),
    "PTV63": (1.00, 0.50, 0.00),
    "PTV56": (1.00, 1.00, 0.00),
    "GTV": (1.00, 0.00, 1.00),
    "CTV": (0.00, 1.00, 1.00),
}

# Lower-cased, separator-free alias -> TG-263 name.
_ALIASES: dict[str, str] = {
    # OpenKBP
    "leftparotid": "Parotid_L",
    "rightparotid": "Parotid_R",
    "mandible": "Bone_Mandible",
    "spinalcord": "SpinalCord",
    "brainstem": "Brainstem",
    "esophagus": "Esophagus",
    "larynx": "Larynx",
    # common clinical spellings
    "parotidl": "Parotid_L", "parotidlt": "Parotid_L", "lparotid": "Parotid_L", "ltparotid": "Parotid_L",
    "parotidleft": "Parotid_L",
    "parotidr": "Parotid_R", "parotidrt": "Parotid_R", "rparotid": "Parotid_R", "rtparotid": "Parotid_R",
    "parotidright": "Parotid_R",
    "bonemandible": "Bone_Mandible", "jaw": "Bone_Mandible",
    "cord": "SpinalCord", "spinal_cord": "SpinalCord", "myelon": "SpinalCord",
    "oesophagus": "Esophagus",
    "body": "External", "external": "External", "skin": "External", "outline": "External", "patient": "External",
    "lungl": "Lung_L", "lunglt": "Lung_L", "leftlung": "Lung_L",
    "lungr": "Lung_R", "lungrt": "Lung_R", "rightlung": "Lung_R",
    "heart": "Heart", "brain": "Brain",
}

# TG-263 -> OpenKBP file stem, for writing predictions back in OpenKBP's own names.
OPENKBP_NAMES: dict[str, str] = {
    "Brainstem": "Brainstem",
    "SpinalCord": "SpinalCord",
    "Parotid_R": "RightParotid",
    "Parotid_L": "LeftParotid",
    "Esophagus": "Esophagus",
    "Larynx": "Larynx",
    "Bone_Mandible": "Mandible",
    "PTV56": "PTV56",
    "PTV63": "PTV63",
    "PTV70": "PTV70",
}

# Left/right pairs, used where a left-right flip must swap labels or left/right consistency is checked.
LATERAL_PAIRS: dict[str, str] = {}
for _name in TG263_COLORS:
    if _name.endswith("_L"):
        LATERAL_PAIRS[_name] = _name[:-2] + "_R"
        LATERAL_PAIRS[_name[:-2] + "_R"] = _name

_PTV = re.compile(r"^(PTV|CTV|GTV)[_ ]?(?:high|low)?[_ ]?(\d+(?:\.\d+)?)\s*(gy)?$", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]+", "", name.strip().lower())


# Characters that would make a name a path, or a file name some system refuses (Windows: < > : " | ? *).
_UNSAFE = re.compile(r'[/\\<>:"|?*]')
MAX_NAME_LENGTH = 128


def safe_name(name: str) -> str:
    """A structure name that is safe as a file name, the one place names from any source (RTSTRUCT, .seg.nrrd, a
    model manifest, OpenKBP file names) pass before a path is built from them: control characters (NUL included)
    are dropped, path separators and characters Windows refuses become ``_``, a leading dot (``..``, hidden files)
    becomes ``_``. A name with nothing left is refused."""
    from rtrai.core.errors import InputError

    if not isinstance(name, str):
        raise InputError(f"structure name {name!r} is not text")
    text = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")).strip()
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"^\.+", lambda m: "_" * len(m.group()), text)[:MAX_NAME_LENGTH].strip()
    if not text or set(text) <= {"_", "."}:
        raise InputError(f"structure name {name!r} holds no usable characters")
    return text


def to_tg263(name: str) -> str:
    """The TG-263 name for ``name`` when recognised, else ``name`` made safe (:func:`safe_name`) and stripped."""
    stripped = safe_name(name)
    if stripped in TG263_COLORS:
        return stripped
    target = _PTV.match(stripped)
    if target:
        kind, level = target.group(1).upper(), target.group(2)
        level = level[:-2] if level.endswith(".0") else level
        return f"{kind}{level}"
    return _ALIASES.get(_key(stripped), stripped)


def is_target(name: str) -> bool:
    """True for target volumes (PTV/CTV/GTV...)."""
    return to_tg263(name).upper().startswith(("PTV", "CTV", "GTV", "ITV"))


def target_dose_level(name: str) -> float | None:
    """The prescription level encoded in a target name (``PTV70`` -> 70.0), or None."""
    match = re.match(r"^(?:PTV|CTV|GTV|ITV)(\d+(?:\.\d+)?)$", to_tg263(name), re.IGNORECASE)
    return float(match.group(1)) if match else None


def color_of(name: str) -> tuple[float, float, float]:
    """Standard colour for a structure; a stable pseudo-random colour for names we do not know."""
    tg = to_tg263(name)
    if tg in TG263_COLORS:
        return TG263_COLORS[tg]
    if is_target(tg):
        return (1.0, 0.3, 0.3)
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(tg))
    return tuple(round(0.3 + 0.6 * ((seed * f) % 97) / 96.0, 3) for f in (13, 37, 71))


def to_openkbp(name: str) -> str:
    """OpenKBP's file stem for a TG-263 name (unknown names are kept)."""
    tg = to_tg263(name)
    return OPENKBP_NAMES.get(tg, tg)
