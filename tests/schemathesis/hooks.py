"""keygate's own schemathesis check, loaded by run.sh through SCHEMATHESIS_HOOKS.

schemathesis.toml lets schema-valid requests be answered 400; this check refuses every such 400
except the refusals that depend on what exists (the document cannot list the names a running
keygate knows): an unknown target or consumer, an address or origin not in the list it is removed from;
and those between two parameters, which JSON Schema cannot relate: a usage range whose `from`
is after its `to`, or that spans more days than it may.
"""

import json

import schemathesis

# (code, field, words the detail must contain) of the 400s a schema-valid request may get.
STATE_REFUSALS = [
    ("invalid_field", "targets", "no target is named"),
    ("invalid_field", "consumer", "no consumer has id"),
    ("invalid_field", "allow_ips", "is not in the list"),
    ("invalid_field", "allow_origins", "is not in the list"),
    ("invalid_field", "from", "from must be on or before to"),
    ("invalid_field", "to", "the range spans"),
]


@schemathesis.check
def schema_valid_requests_are_refused_only_for_state(ctx, response, case):
    """A schema-valid request answered 400 names a missing target, consumer or address."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    try:
        problem = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"400 without a JSON problem: {response.content[:200]!r}")
    for code, field, words in STATE_REFUSALS:
        if (
            problem.get("code") == code
            and problem.get("field") == field
            and words in problem.get("detail", "")
        ):
            return None
    raise AssertionError(
        "A request docs/admin-api.yaml allows was refused with 400: "
        f"code={problem.get('code')!r} field={problem.get('field')!r} "
        f"detail={problem.get('detail')!r}"
    )
