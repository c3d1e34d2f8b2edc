"""The ``plmserve`` command line (typer + rich).

Each area registers its commands from its own module onto :data:`app`:
``serve`` (serve.py), ESM-2 ``encode``/``predict``/``score-variants`` (esm2.py), ``models``
(models.py), ``msa``/``prompt`` (align.py), ``poet`` (poet.py), ``esm3`` (esm3.py),
``users``/``jobs`` (jobs.py).
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



@app.callback()
def _root() -> None:
    """Serve protein language models (ESM-2, ESM3, PoET) on your own hardware."""


@app.command("version")
def version() -> None:
    """Print the plmserve version."""
    from plmserve import __version__

    print(__version__)


_MODULES = ("serve", "esm2", "models", "align", "poet", "esm3", "jobs", "variants")
for _name in _MODULES:
    try:
        _mod = importlib.import_module(f"plmserve.cli.{_name}")
    except ModuleNotFoundError as _exc:  # an area not built yet
        if _exc.name != f"plmserve.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
