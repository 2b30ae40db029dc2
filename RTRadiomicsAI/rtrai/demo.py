"""``rtrai demo -o OUT``: the main job on built-in data, with no downloads.

For now the demo writes the synthetic head-and-neck phantom (``rtrai.phantom``) as a case folder and as a Slicer
scene bundle (``scene.mrb``) that opens in 3D Slicer with the CT, the coloured structures and the dose colour wash.
The later pipeline issues grow it into the full run (segment, predict dose, radiomics, outcome, report).
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the main job on the built-in synthetic phantom (no downloads)")
    demo.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="phantom variant (0 = the canonical demo case)")
    demo.set_defaults(func=run_demo)


def run_demo(args) -> int:
    out = demo(Path(args.output), seed=args.seed)
    print(f"wrote the demo into {out}: open {out / 'scene.mrb'} in 3D Slicer")
    return 0


def demo(outdir: Path, seed: int = 0) -> Path:
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.io.case_io import write_case
    from rtrai.phantom import make_phantom

    case = make_phantom(seed=seed)
    with output_folder(outdir) as tmp:
        write_case(case, tmp)
        scene_note = _write_scene(case, tmp / "scene.mrb")
        provenance.write(tmp, provenance.record("demo", {"seed": seed}, seed=seed,
                                                extra={"case": case.summary(), "synthetic_data": True,
                                                       "scene": scene_note}))
    return outdir


def _write_scene(case, path: Path) -> str:
    """Write the Slicer scene bundle when MRML is available (slicer-core outside Slicer, or Slicer itself)."""
    try:
        from rtrai.mrml import case_to_scene, save_scene_bundle
    except ImportError as exc:
        return f"not written: MRML is not available ({exc}); install rtradiomicsai[mrml]"
    nodes = case_to_scene(case)
    save_scene_bundle(nodes["scene"], path)
    return path.name
