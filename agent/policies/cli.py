"""``brulee policies``: every eviction and proactive policy with its one-line description."""

from __future__ import annotations

import inspect
import textwrap

import click

from agent.policies import ALIASES, POLICIES
from agent.policies.proactive import PROACTIVE, PROACTIVE_ALIASES

# Constructor parameters every eviction policy takes from its caller, not from the user.
_NOT_OPTIONS = {"self", "seed", "oracle"}


def options_of(cls: type) -> str:
    """The user-settable options of a policy class with their defaults (``cost=direct``)."""
    params = inspect.signature(cls).parameters.values()
    return " ".join(f"{p.name}={p.default}" for p in params if p.name not in _NOT_OPTIONS)


def _listing(registry: dict, aliases: dict[str, str]) -> list[str]:
    """One line per policy (name, description), its aliases and options indented below."""
    width = max(map(len, registry)) + 2
    indent = " " * (width + 2)
    lines = []
    for name, cls in registry.items():
        note = " [oracle: simulation only]" if getattr(cls, "needs_oracle", False) else ""
        lines.append(f"  {name:<{width}}{cls.description}{note}")
        if others := sorted(a for a, target in aliases.items() if target == name):
            lines.append(f"{indent}also: {', '.join(others)}")
        if options := options_of(cls):
            lines += textwrap.wrap(
                f"options: {options}", 100, initial_indent=indent, subsequent_indent=indent + "  "
            )
    return lines


@click.command("policies")
def policies_command() -> None:
    """List the eviction and proactive (keep-alive, prewarm) policies, with their options."""
    click.echo("Eviction policies (what a miss evicts first):")
    click.echo(
        "  (every policy's victims are then trimmed as in the seed: of those it took, only the\n"
        "  fewest, largest first, that free enough go; trim=off evicts all it took)"
    )
    click.echo("\n".join(_listing(POLICIES, ALIASES)))
    click.echo()
    click.echo("Proactive policies (keep-alive and prewarm):")
    click.echo("\n".join(_listing(PROACTIVE, PROACTIVE_ALIASES)))
