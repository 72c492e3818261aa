"""``gor-det``: one installed command for every gor_det tool, Ultralytics-style.

    gor-det train cfg=demo_student.yaml epochs=3 gor.quant.w_bits=4     (cfg=FILE or --cfg FILE)
    gor-det val model=runs/x/weights/best.pt data=coco.yaml ann=instances_val2017.json
    gor-det export --model runs/x/weights/best.pt --data data.yaml       (the --flag form works as well)
    gor-det ptq model=fp.pt data=data.yaml w_bits=4
    gor-det synth out=datasets/synth_demo preset=demo

A ``key=value`` whose key is one of the subcommand's options is that option (``model=a.pt`` is ``--model a.pt``;
a list option takes ``a,b`` or ``[a,b]``; a switch takes ``true``/``false``); any other ``key=value`` is passed on as
it is (train's cfg overrides, ptq's ``gor.quant`` keys). Each subcommand is ``gor_det.commands.<name>``, and
``tools/*.py`` are aliases of them.
"""

from __future__ import annotations

import importlib
import sys

from gor_det.commands import COMMANDS


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary, _) in COMMANDS.items())
    return f"usage: gor-det <command> [key=value | --option value ...]\n\ncommands:\n{rows}\n\n" \
           f"gor-det <command> --help shows a command's options.\n"


def main(argv: list[str] | None = None) -> int:
    """Run ``gor-det <command> ...`` and return its exit code (a bad command name: 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from gor_det.config import suggest

        print(f"error: unknown command '{name}'{suggest(name, COMMANDS)}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"gor_det.commands.{COMMANDS[name][0]}")
    prog = f"gor-det {name}"
    return module.main(rest, prog=prog)


def entrypoint() -> None:
    """The console script: :func:`main` with one-line errors (``gor_det.engine.cli.run_cli``)."""
    from gor_det.engine.cli import run_cli

    run_cli(main)
