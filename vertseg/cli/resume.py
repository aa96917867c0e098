"""The command that continues a stopped `vertseg train` or `vertseg tune`: the user's own command line, replayed.

Printed after a Ctrl-C, so that the run resumes with the same stores, config, folders and resources; Ray's own
advice (`Tuner.restore(...)`) would skip vertseg's checks of changed configs and stores.
"""

from __future__ import annotations

import shlex

import typer


def resume_command(ctx: typer.Context, add: list[str], drop: tuple[str, ...] = ()) -> str:
    """`vertseg <command>` with the parameters given on this command line (less those named in `drop`), then `add`."""
    words = ["vertseg", ctx.info_name]
    for param in ctx.command.params:  # by name: Typer vendors its own click, whose ParameterSource is not click's
        if param.name in drop or ctx.get_parameter_source(param.name).name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        for item in value if getattr(param, "multiple", False) else [value]:
            if param.param_type_name == "argument":
                words.append(str(item))
            else:
                words += [param.opts[0]] if getattr(param, "is_flag", False) else [param.opts[0], str(item)]
    return shlex.join(words + add)
