"""Schemathesis against a real agent (real Redis, a real worker, real HTTP, the test models):
every operation of ``/openapi.json`` with schema-valid and schema-violating requests (the
examples, coverage and fuzzing phases: wrong types, missing fields, undeclared methods, missing
or wrong token), then stateful runs that follow the document's links (deploy -> invoke / remove,
list -> invoke, async -> job), so the invocation routes get real function names.

All of Schemathesis' checks run, with three settings for what the document cannot express:

- *positive data acceptance* also accepts 400 and 413 on the invocation routes and on deploy:
  a function's input shape, content type and body limit (a deploy's ``max_bytes``), a
  handler's fit to a model, and whether an ``X-Callback-Url`` resolves to a public host are
  facts of the running agent, not of the schema (the answer then names the problem, which
  ``test_security.py`` checks case by case);
- *not a server error* accepts 507 on the invocation routes: a fuzzed deploy may give a
  function a memory hint larger than the device's whole cap, and 507 is the designed answer;
- *ensure resource availability* is off for ``DELETE /system/functions``: it takes the name
  in its body, and the check counts any 404 of an operation without parameters after a deploy
  as "created resource not found", even when the fuzzer made the name up.

Anything else fails: a 500, an undocumented status, a non-JSON error, a 405 without
``Allow``, a schema-violating request accepted, an answer that does not match its schema.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402 (after the skip)
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402
from hypothesis.errors import Flaky  # noqa: E402

from agent.openapi import openapi_document  # noqa: E402
from tests.agent_fixtures import running_agent  # noqa: E402

# Hypothesis' caches go to the temporary directory, not into the repository (no example
# database either: runs are seeded and bounded)
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "brulee-hypothesis")
pytestmark = pytest.mark.timeout(300)
CAP = 64 * 1024 * 1024
TOKEN = "fuzz-token"
MAX_EXAMPLES = int(os.environ.get("BRULEE_FUZZ_EXAMPLES", "40"))  # per operation and phase
INVOCATIONS = ["invokeFunction", "invokeFunctionAsync"]
STATEFUL_ROUNDS, STATEFUL_EXAMPLES = 3, 15  # sequences of up to 8 calls
SEMANTIC_400 = [*INVOCATIONS, "deployFunction"]
# Schemathesis' default for accepted valid data (5xx are judged by not_a_server_error)
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def fuzz_config(url: str | None = None):
    """Schemathesis' configuration: all checks, bounded examples, the token on every request
    (the ``ignored_auth`` check still sends requests without it and expects 401)."""
    return schemathesis.Config.from_dict(
        {
            **({"base-url": url} if url else {}),
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "seed": int(os.environ.get("BRULEE_FUZZ_SEED", "20261129")),
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "mode": "all",
                "database": "none",
                "no-shrink": True,  # the agent's state moves on: a replay is another test
            },
            "checks": {"enabled": True},
            "operations": [
                {
                    "include-operation-id": SEMANTIC_400,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [*POSITIVE_DEFAULT, "400", "413"]
                        }
                    },
                },
                {
                    "include-operation-id": "removeFunction",
                    "checks": {"ensure_resource_availability": {"enabled": False}},
                },
                {
                    "include-operation-id": INVOCATIONS,
                    "checks": {
                        "not_a_server_error": {
                            "expected-statuses": ["1xx", "2xx", "3xx", "4xx", "507"]
                        }
                    },
                },
            ],
        }
    )


def model_names() -> list[str]:
    """The test set's model names, known before it is built (the deploy schema lists them)."""
    from models.build import plan
    from models.zoo import resolve

    return sorted(spec.name for spec in plan(resolve("test")))


# .npy bodies go out as the raw bytes Schemathesis generates for "format: binary"
schemathesis.serializer.alias("application/x-npy", "application/octet-stream")

# The document the agent serves, built here at import so pytest can parametrize over its
# operations (test_the_fuzzed_document_is_the_served_one checks that the two are equal).
DOCUMENT = openapi_document(model_names())
schema = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config())


@pytest.fixture(scope="module")
def fuzz_agent(test_models: Path):
    with running_agent(test_models, CAP, workers=1, token=TOKEN) as info:
        yield info


def test_the_fuzzed_document_is_the_served_one(fuzz_agent):
    served = requests.get(f"{fuzz_agent['url']}/openapi.json", timeout=10).json()
    assert served == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_positive_and_negative(case, fuzz_agent):
    case.call_and_validate(base_url=fuzz_agent["url"], timeout=30)


def test_stateful_links_reach_real_functions(fuzz_agent):
    """Sequences that follow the links: deployed and listed names reach the invocation routes
    (which then answer something other than 404), async ids reach ``/jobs``.

    The agent keeps its state from one sequence to the next, so Hypothesis may find that a
    sequence it replays no longer draws the same values (``Flaky``); Schemathesis' own runner
    restarts then, and so does this test. Every check failure is kept as it happens, so a
    ``Flaky`` raised while confirming a failure cannot hide it."""
    url = fuzz_agent["url"]
    api = schemathesis.openapi.from_url(f"{url}/openapi.json", config=fuzz_config(url))
    seen: list[tuple[str, int]] = []
    failures: list[BaseException] = []

    class Machine(api.as_state_machine()):
        def after_call(self, response, case):
            super().after_call(response, case)
            seen.append((case.operation.label, response.status_code))

        def validate_response(self, response, case, *args, **kwargs):
            try:
                super().validate_response(response, case, *args, **kwargs)
            except Exception as exc:
                failures.append(exc)
                raise

    for _round in range(STATEFUL_ROUNDS):
        try:
            Machine.run(
                settings=settings(
                    phases=[Phase.generate],
                    max_examples=STATEFUL_EXAMPLES,
                    stateful_step_count=8,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
            )
        except Flaky:
            pass  # the agent's state moved on between two replays: see the docstring
        assert not failures, failures[0]
    invoked = [s for label, s in seen if "/function/" in label or "/async-function/" in label]
    assert invoked and any(status != 404 for status in invoked), seen
