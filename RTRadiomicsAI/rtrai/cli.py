"""The ``rtrai`` command.

Each capability registers its own sub-commands from ``rtrai/<capability>/commands.py`` (a ``register(subparsers)``
function that imports nothing heavy at module level), so ``rtrai --help`` stays fast and every capability has one
obvious place for its command line. Errors from :mod:`rtrai.core.errors` become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rtrai import __version__
from rtrai.core.errors import RTRAIError

# The argument names under which commands take what they write; every other path argument is an input.
OUTPUT_DESTS = ("output", "outdir")
# Inputs that may lie inside the output folder (a training run may start from a model in its own work folder).
MAY_LIE_INSIDE_OUTPUT = ("init",)
# Arguments that are never paths (a Dask address or "local", a memory size, column names), whatever their text.
NOT_PATHS = ("scheduler", "worker_memory", "endpoint")

# Sub-command modules, in the order they appear in --help.
COMMAND_MODULES = (
    "rtrai.io.commands",
    "rtrai.io.dicom_commands",
    "rtrai.radiomics.commands",
    "rtrai.outcome.commands",
    "rtrai.segmentation.commands",
    "rtrai.dose.commands",
    "rtrai.dose.evaluation_commands",
    "rtrai.plan.commands",
    "rtrai.pipeline",
    "rtrai.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtrai",
        description="RTRadiomicsAI: deep learning and radiomics for radiotherapy "
                    "(auto-contouring, dose prediction, radiomics, outcome models).",
    )
    parser.add_argument("--version", action="version", version=f"rtrai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, compute device and available models")
    info.set_defaults(func=_info)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _info(args) -> int:
    import platform

    import numpy
    import SimpleITK

    print(f"rtrai {__version__} on Python {platform.python_version()} ({platform.system()} {platform.machine()})")
    print(f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version.VersionString()}")
    for module, label in (("torch", "torch"), ("monai", "MONAI"), ("radiomics", "pyradiomics"),
                          ("pydicom", "pydicom"), ("sklearn", "scikit-learn"), ("lifelines", "lifelines"),
                          ("slicer", "slicer (MRML)")):
        try:
            mod = importlib.import_module(module)
            version = getattr(mod, "__version__", "present")
            print(f"{label}: {version}")
        except Exception:  # noqa: BLE001 - info must report, never fail
            print(f"{label}: not installed")
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"device: {device} ({torch.get_num_threads()} CPU threads)")
    except ImportError:
        print("device: cpu (torch not installed)")
    try:
        from rtrai.models import list_models

        models = list_models()
        print("models: " + (", ".join(f"{m['name']} ({m['sha256'][:12]})" for m in models) or "none shipped"))
    except ImportError:
        print("models: none shipped")
    return 0


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: the command's output is not one of its inputs, not inside one, contains none, and can be
    written (:func:`rtrai.core.paths.check_output`)."""
    from rtrai.core.paths import check_output

    def strings(value) -> list[str]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [v for v in values if isinstance(v, str) and v]

    for dest in OUTPUT_DESTS:
        for output in strings(getattr(args, dest, None)):
            inputs = [v for key, value in vars(args).items()
                      if key not in OUTPUT_DESTS + MAY_LIE_INSIDE_OUTPUT + NOT_PATHS for v in strings(value)]
            inside = [v for key in MAY_LIE_INSIDE_OUTPUT for v in strings(getattr(args, key, None))]
            check_output(output, inputs, "-o" if dest == "output" else "OUTDIR", inside)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        check_paths(args)
        return int(args.func(args) or 0)
    except RTRAIError as exc:
        print(f"rtrai: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused (disk full, permissions changed mid-run): one line, not a trace
        from rtrai.core.paths import describe_os_error

        print(f"rtrai: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtrai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
