"""Test data for the schemathesis run (tests/schemathesis.sh).

Generated requests are valid by the schema but mostly name kinds, users, sessions and
learning plans that do not exist, or pair a `completed_at` with a start it precedes,
which the API rightly refuses (422, 404), so most would never reach the code behind
them. Just before each positive request is sent, in every phase, these hooks point
three in four of them at data the script creates: a known user, kinds, a learning
plan and a session. Negative requests (meant to be refused) are left as generated.
Which ones are pointed is decided from the generated values (CRC32), so a run with
the same seed makes the same requests.
"""
import uuid
import zlib

import schemathesis
from schemathesis.generation.modes import GenerationMode

USER = "kamile"
KINDS = ["practice", "learning_plan", "assessment"]
LEARNING_PLAN = "5c4e0000-0000-4000-8000-0000000000a1"
SESSION = "5c4e0000-0000-4000-8000-000000000001"


def _pick(value) -> int:
    return zlib.crc32(repr(value).encode())


def _body(path, body):
    body = dict(body)
    if path == "/v1/sessions":
        body["kind"] = KINDS[_pick(body) % len(KINDS)]
        if "user_id" in body:
            body["user_id"] = USER
        if body.get("learning_plan_id") is not None:
            body["learning_plan_id"] = LEARNING_PLAN
        # Random timestamps are mostly years away from now: refused by the rules.
        body.pop("started_at", None)
        # Generators repeat the same few ids; the same id with other content is a
        # (correct) 409. Derive the id from the content, so a repeat is a retry.
        if body.get("session_id") is not None:
            body["session_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, repr(sorted(body.items()))))
    body.pop("completed_at", None)
    return body


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if _pick((case.path_parameters, case.body)) % 4 == 0:
        return
    if isinstance(case.body, dict):
        case.body = _body(case.operation.path, case.body)
    if isinstance(case.path_parameters, dict):
        if "session_id" in case.path_parameters:
            case.path_parameters["session_id"] = SESSION
        if "user_id" in case.path_parameters:
            case.path_parameters["user_id"] = USER
