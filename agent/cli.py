"""The ``brulee`` command: one entry point, a group per part of the system."""

from __future__ import annotations

import click

from agent import __version__
from models.cli import models_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="brulee")
def main() -> None:
    """brulee: serve many deep-learning models on one edge device, with memory as a model cache."""


main.add_command(models_group)
