"""The ``brulee`` command: one entry point, a group per part of the system.

Each command's module is imported only when that command runs (``brulee up`` does not load
the simulator, Locust or the model builder: every process it starts shares its imports)."""

from __future__ import annotations

from importlib import import_module

import click

from agent import __version__

# command name -> "module:attribute", in the order ``brulee --help`` lists them
COMMANDS = {
    "models": "models.cli:models_group",
    "policies": "agent.policies.cli:policies_command",
    "trace": "loadgen.trace_cli:trace_group",
    "simulate": "loadgen.sim_cli:simulate_command",
    "simulate-worker": "loadgen.sim_sweep:simulate_worker_command",
    "up": "agent.agent_cli:up_command",
    "worker": "agent.agent_cli:worker_command",
    "invoke": "agent.agent_cli:invoke_command",
    "replay": "loadgen.replay_cli:replay_command",
    "testbed": "loadgen.testbed:testbed_command",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(import_module(module), attr)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="brulee")
def main() -> None:
    """brulee: serve many deep-learning models on one edge device, with memory as a model cache."""


if __name__ == "__main__":
    main()
