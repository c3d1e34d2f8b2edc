"""The ``plmserve`` command line (typer + rich).

Each area registers its commands from its own module onto :data:`app`:
``serve`` (serve.py), ESM-2 ``encode``/``predict``/``score-variants`` (esm2.py), ``models``
(models.py), ``msa``/``prompt`` (align.py), ``poet`` (poet.py), ``esm3`` (esm3.py),
``users``/``jobs`` (jobs.py), ``doctor`` (doctor.py). ``plmserve --version`` prints the version.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="plmserve",
    help="Serve protein language models (ESM-2, ESM3, PoET) on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



def _show_flag_types_as_flags() -> None:
    """Typer's rich help writes ``<bool>`` after on/off flags (``--json <bool>``), which reads as if
    the flag took a value (``--json true`` is then refused). Show flags without a type, as click does."""
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_plmserve_flags", False):  # another typer, or done already
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if self.is_flag else original(self, ctx)

    display_type_rich._plmserve_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_show_flag_types_as_flags()


def _print_version(value: bool) -> None:
    if value:
        from plmserve import __version__

        print(f"plmserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the plmserve version and exit"),
) -> None:
    """Serve protein language models (ESM-2, ESM3, PoET) on your own hardware."""


@app.command("version")
def version() -> None:
    """Print the plmserve version."""
    from plmserve import __version__

    print(__version__)


_MODULES = ("serve", "esm2", "models", "align", "poet", "esm3", "jobs", "doctor", "variants")
for _name in _MODULES:
    try:
        _mod = importlib.import_module(f"plmserve.cli.{_name}")
    except ModuleNotFoundError as _exc:  # an area not built yet
        if _exc.name != f"plmserve.cli.{_name}":
            raise
        continue
    _mod.register(app)


def _not_dummy_record(record: logging.LogRecord) -> bool:
    """Drop the model loaders' dummy-weights log records: the commands print one warning themselves."""
    return not getattr(record, "plmserve_dummy", False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_dummy_record)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
