"""Every ``brulee`` command answers ``--help``."""

from __future__ import annotations

import click
from click.testing import CliRunner

from agent.cli import main


def _commands(group: click.Group, path=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # `brulee` imports its commands when asked
        cmd = group.get_command(ctx, name)
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def test_help_on_every_command():
    runner = CliRunner()
    paths = [()] + list(_commands(main))
    assert ("models", "build") in paths and ("models", "profile") in paths
    for path in paths:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
