"""``python -m lowrank_pool``: the compiled CPU kernel's commands.

``build-kernel`` compiles the optional kernel for this CPU (or ``--capability all``, or a name) into this
environment (``make setup`` runs it); ``kernel-status`` says whether a process here would load it, and why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowrank_pool", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-kernel", help="compile the optional CPU kernel (idempotent)")
    build.add_argument(
        "--capability",
        default="native",
        help="'native' (the best this CPU runs, the default), 'all', or a comma-separated list of avx512, avx2",
    )
    build.add_argument("--jobs", type=int, default=None, help="parallel compiler processes (default: every core)")
    build.add_argument("--force", action="store_true", help="rebuild even when an up-to-date binary exists")
    build.add_argument("--quiet", action="store_true", help="print only the final status")
    build.add_argument(
        "--optional",
        action="store_true",
        help="exit 0 when the kernel cannot be built here (the torch path then runs); say why",
    )
    commands.add_parser("kernel-status", help="whether this environment loads the kernel, and why")
    args = parser.parse_args(argv)

    from . import _native

    if args.command == "kernel-status":
        st = _native.status()
        print(f"available: {st.available}\ncapability: {st.capability}\npath: {st.path}\nreason: {st.reason}")
        print(f"cpu: {', '.join(st.cpu) or 'none'}\ndirectories: {', '.join(st.directories)}")
        return 0 if st.available else 1
    capability = args.capability if args.capability in ("native", "all") else args.capability.split(",")
    try:
        st = _native.build(capability, jobs=args.jobs, force=args.force, verbose=not args.quiet)
    except _native.KernelBuildError as err:
        print(f"lowrank_pool: the compiled kernel was not built: {err}", file=sys.stderr)
        return 0 if args.optional else 1
    print(f"lowrank_pool: {st.reason} ({st.path})" if st.available else f"lowrank_pool: {st.reason}")
    return 0 if st.available or args.optional else 1


if __name__ == "__main__":
    sys.exit(main())
