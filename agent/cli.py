"""The ``brulee`` command: one entry point, a group per part of the system."""

from __future__ import annotations

import click

from agent import __version__
from agent.agent_cli import invoke_command, up_command, worker_command
from agent.policies.cli import policies_command
from loadgen.replay_cli import replay_command
from loadgen.sim_cli import simulate_command
from loadgen.testbed import testbed_command
from loadgen.trace_cli import trace_group
from models.cli import models_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="brulee")
def main() -> None:
    """brulee: serve many deep-learning models on one edge device, with memory as a model cache."""


for command in (
    models_group,
    policies_command,
    trace_group,
    simulate_command,
    up_command,
    worker_command,
    invoke_command,
    replay_command,
    testbed_command,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
