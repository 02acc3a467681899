"""The ``brulee`` command: one entry point, a group per part of the system."""

from __future__ import annotations

import click

from agent import __version__
from agent.policies.cli import policies_command
from loadgen.replay_cli import replay_command
from loadgen.trace_cli import trace_group
from models.cli import models_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="brulee")
def main() -> None:
    """brulee: serve many deep-learning models on one edge device, with memory as a model cache."""


main.add_command(models_group)
main.add_command(policies_command)
main.add_command(trace_group)
main.add_command(__import__("loadgen.sim_cli").sim_cli.simulate_command)
main.add_command(replay_command)
main.add_command(__import__("agent.agent_cli").agent_cli.up_command)
main.add_command(__import__("agent.agent_cli").agent_cli.worker_command)
main.add_command(__import__("agent.agent_cli").agent_cli.invoke_command)
