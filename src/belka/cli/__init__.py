"""The ``belka`` command. Thin: every verb calls the library; errors a user can cause become one
line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import sys

import click

from ..errors import BelkaError


class BelkaGroup(click.Group):
    """A click group that turns :class:`BelkaError` into ``belka: message`` and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BelkaError as err:
            click.echo(f"belka: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("belka: interrupted", err=True)
            sys.exit(130)


@click.group(cls=BelkaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="belka", prog_name="belka")
def main() -> None:
    """belka: classify images on-device, look inside the model, see why it decided, and gate
    uploads on it ("warn the user when the picture is not a squirrel").

    Everything runs offline on the CPU (CUDA when present) on the packaged EfficientNet-Lite0.
    Run `belka COMMAND --help` for the details of each command.
    """
    _show_engine_messages()


def _show_engine_messages() -> None:
    """Say on stderr when the engine exports a model (a one-off wait of 20-35 s) or falls back
    to PyTorch; the library itself stays quiet unless the caller configures logging."""
    import logging

    class ToStderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            click.echo(f"belka: {record.getMessage()}", err=True)   # today's stderr, always

    logger = logging.getLogger("belka.engine")
    if not any(type(h).__name__ == "ToStderr" for h in logger.handlers):
        logger.addHandler(ToStderr())
        logger.setLevel(logging.INFO)


# Each module adds its commands to `main` when imported, so `belka --help` lists them all.
COMMAND_MODULES = ("commands_models", "commands_inspect", "commands_explain", "commands_serve",
                   "commands_lab", "commands_learn", "commands_train", "commands_export",
                   "commands_pictures", "commands_scan")


def _register() -> None:
    import importlib
    import importlib.util

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}")


_register()
