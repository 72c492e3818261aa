"""The ``gor-det`` subcommands, one module each with ``main(argv=None, prog=None) -> exit code``.

``gor_det.cli`` dispatches to them (``gor-det train ...``), ``tools/*.py`` are aliases of them (``python
tools/train_det.py ...``); ``prog`` is how the user called the command, echoed in help, tables and advice. A new
command is a module here plus one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys

#: subcommand -> (module under gor_det.commands, one-line summary, its tools/ alias)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "train a student (QAT + KD + GoR) or a teacher from a run cfg", "tools/train_det.py"),
    "val": ("val", "COCO mAP (pycocotools) of checkpoints and exported models", "tools/val_det.py"),
    "export": ("export", "export a student (ONNX Q/DQ, ONNX, NCNN, ONNX Runtime INT8, TensorRT)", "tools/export_det.py"),
    "ptq": ("ptq", "post-training quantization of a float checkpoint (no training)", "tools/ptq_det.py"),
    "synth": ("synth", "generate the offline synthetic detection benchmark", "tools/make_synthetic.py"),
}

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def translate(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrite ``key=value`` tokens naming one of ``parser``'s options into ``--key value`` (see module doc)."""
    options = {}
    for action in parser._actions:  # argparse has no public listing of a parser's options
        for s in action.option_strings:
            if s.startswith("--"):
                options[s[2:]] = options[s[2:].replace("-", "_")] = action
    out = []
    for tok in argv:
        key, eq, value = tok.partition("=")
        action = options.get(key) if eq and not tok.startswith("-") else None
        if action is None:
            out.append(tok)
        elif action.nargs == 0:  # a switch (store_true)
            if value.lower() not in TRUE | FALSE:
                raise SystemExit(f"error: {key}={value}: a switch takes true or false")
            if value.lower() in TRUE:
                out.append(action.option_strings[-1])
        elif action.nargs in ("+", "*"):
            items = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
            out += [action.option_strings[-1], *items]
        else:
            out += [action.option_strings[-1], value]
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` of ``argv`` (default ``sys.argv[1:]``) with ``key=value`` options (:func:`translate`)."""
    return parser.parse_args(translate(list(sys.argv[1:] if argv is None else argv), parser))
