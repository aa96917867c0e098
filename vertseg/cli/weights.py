"""`vertseg weights list|import|export|default`: the local registry of checkpoints `vertseg predict` uses."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    weights_app = typer.Typer(
        help="Manage the local registry of trained models.\n\nVersioned checkpoints (sha256 + config) in "
             "$VERTSEG_HOME/weights or the user cache; `vertseg predict` without --checkpoint uses its default model.",
        no_args_is_help=True,
    )
    app.add_typer(weights_app, name="weights")

    @weights_app.command("list")
    def list_weights() -> None:
        """Registered models (the default marked *), their sha256 and network."""
        from vertseg.weights import Registry, RegistryError

        registry = Registry()
        try:
            entries, default = registry.entries(), registry.default_ref()
        except RegistryError as error:
            raise fail(str(error)) from None
        from vertseg.weights.bundled import BUNDLED_DEFAULT

        bundled = f"bundled model {BUNDLED_DEFAULT} (vertseg/resources/weights/{BUNDLED_DEFAULT}.json: its model card)"
        if not entries:
            console.print(f"no models in {registry.root}; `vertseg predict` uses the {bundled}; add one with "
                          "`vertseg weights import CHECKPOINT_OR_URL`", highlight=False)
            return
        typer.echo(f"models in {registry.root} (* = default; without one, the {bundled}):")
        for entry in entries:
            m = entry.model
            network = (f"width {m['base_width']}, {m['num_classes']} classes, {m['bottleneck']}, patch "
                       f"{'x'.join(map(str, m['patch_size']))} at {m['spacing_mm']} mm, {m['method']} ({m['weights']})")
            typer.echo(f"{'*' if entry.ref == default else ' '} {entry.ref}  sha256 {entry.sha256}  {network}  "
                       f"from {entry.source}")

    @weights_app.command("import")
    def import_weights(
        source: str = typer.Argument(..., help="Checkpoint path, or an http(s):// / file:// URL."),
        name: str = typer.Option("vertseg", "--name", help="Model name."),
        version: str = typer.Option(None, "--version", help="Version label (default: the next integer for NAME)."),
        sha256: str = typer.Option(None, "--sha256", help="Expected SHA-256; required for downloads, checked for files."),
        default: bool = typer.Option(False, "--default", help="Make it the default model (the first import always is)."),
    ) -> None:
        """Fetch, verify and register a checkpoint.

        Fetch a checkpoint (verified against --sha256), check it loads, and register it as NAME@VERSION."""
        from vertseg.weights import FetchError, Registry, RegistryError

        registry = Registry()
        try:
            entry = registry.import_checkpoint(source, name, version, sha256, default)
        except (FetchError, RegistryError) as error:
            raise fail(str(error)) from None
        mark = " (default)" if registry.default_ref() == entry.ref else ""
        console.print(f"registered {entry.ref}{mark}: sha256 {entry.sha256} -> {registry.folder(entry)}", highlight=False)

    @weights_app.command("export")
    def export_weights(
        ref: str = typer.Argument(None, help="NAME@VERSION or NAME (newest); default: the default model."),
        out: Path = typer.Option(..., "--out", "-o", help="Checkpoint file to write; OUT.sha256 is written beside it."),
        slim: bool = typer.Option(False, "--slim", help="Only what inference needs (deployed weights, config, "
                                  "scores): no optimiser or training state, a third of the size."),
    ) -> None:
        """Copy a registered checkpoint out, with its sha256.

        Copy a registered checkpoint out (to share it) with its sha256, checked against the registry first."""
        from vertseg.weights import Registry, RegistryError, sha256_of

        try:
            path, entry = Registry().export(ref, out, slim=slim)
        except RegistryError as error:
            raise fail(str(error)) from None
        console.print(f"{entry.ref} -> {path}{' (slim)' if slim else ''} (sha256 {sha256_of(path)})", highlight=False)

    @weights_app.command("default")
    def default_weights(ref: str = typer.Argument(..., help="NAME@VERSION or NAME (newest).")) -> None:
        """Choose the model `vertseg predict` uses.

        Choose the model `vertseg predict` uses when --checkpoint is omitted."""
        from vertseg.weights import Registry, RegistryError

        try:
            entry = Registry().set_default(ref)
        except RegistryError as error:
            raise fail(str(error)) from None
        console.print(f"default model: {entry.ref}", highlight=False)
