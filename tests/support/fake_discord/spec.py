"""Validate the bot's REST request bodies against Discord's official OpenAPI spec.

Why: the fake server is only as good as its strictness.  A fake that accepts any
JSON lets a bot pass CI and then fail on Discord with ``50035 Invalid Form Body``.
So every request the fake receives is matched to the spec operation Discord would
route it to, and its JSON body (or the ``payload_json`` part of a multipart body)
is validated with JSON Schema 2020-12 (which is what OpenAPI 3.1 schemas are).

Spec quirks and the workarounds applied (each one is a body Discord accepts that
the spec, read literally, rejects):

* ``SnowflakeType`` is ``{"type": "string", "pattern": ...}`` but Discord accepts
  snowflakes as JSON integers, and discord.py sends integers, e.g. the attachment
  ``id`` (a file index: ``{"id": 0, "filename": ...}``) and ``allowed_mentions.users``.
  We widen it to "string matching the pattern OR non-negative integer".
* The multipart schemas are ``allOf: [<Request>, {properties: files[0..9]}]``;
  Discord reads the fields from the ``payload_json`` part and the uploads from
  ``files[n]`` parts.  We validate the decoded ``payload_json`` object against the
  multipart schema (the ``files[n]`` properties are optional, so they are simply
  absent) and count the file parts separately (at most 10, as the schema implies).
* Tightened, the other way: ``MessageCreateRequest``/``MessageEditRequestPartial``
  (and ``BaseCreateMessageCreateRequest`` for forum posts) allow 4000 characters
  of ``content``, the Nitro limit for *users*; bots get 400 50035 above 2000, so
  we validate against 2000.
* Responses (used only to check the fake's own replies): the spec types the
  ``code`` of field errors inside ``errors`` as integers; Discord sends strings
  such as ``"BASE_TYPE_MAX_LENGTH"``, so those may be either.
* ``x-discord-union: oneOf`` unions are written as ``anyOf`` in the spec; we keep
  ``anyOf`` (a body matching two branches is fine, as on Discord).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "discord-openapi.json"
SPEC_URI = "urn:discord:openapi"
API_PREFIX = "/api/v10"
BOT_CONTENT_LIMIT = 2000
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")


@dataclass(frozen=True)
class Operation:
    """One (method, path template) of the spec and where its request schemas live."""

    method: str
    template: str
    operation_id: str
    regex: re.Pattern
    literal_segments: int
    body_required: bool
    body_pointers: dict  # content type -> JSON pointer of the schema
    response_pointers: dict  # status ("200", "4XX", "default") -> JSON pointer of the JSON schema


def _escape_pointer(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _patch_spec(spec: dict) -> dict:
    """Apply the documented quirk workarounds to a copy of the spec."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    snowflake = schemas["SnowflakeType"]
    schemas["SnowflakeType"] = {
        "anyOf": [snowflake, {"type": "integer", "minimum": 0}],
        "format": "snowflake",
    }
    schemas["InnerErrors"]["properties"]["_errors"]["items"] = {
        "type": "object",
        "properties": {"code": {"type": ["integer", "string"]}, "message": {"type": "string"}},
        "required": ["code", "message"],
    }
    for name in ("MessageCreateRequest", "MessageEditRequestPartial", "BaseCreateMessageCreateRequest"):
        schemas[name]["properties"]["content"]["maxLength"] = BOT_CONTENT_LIMIT
    return spec


def _template_regex(template: str) -> tuple[re.Pattern, int]:
    parts = template.strip("/").split("/")
    out, literals = [], 0
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            out.append(r"[^/]+")
        else:
            out.append(re.escape(part))
            literals += 1
    return re.compile("^/" + "/".join(out) + "$"), literals


class SpecValidator:
    """Matches requests to operations and validates bodies; build once, reuse."""

    def __init__(self, spec: dict):
        self.spec = _patch_spec(spec)
        resource = Resource.from_contents(self.spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)
        self.operations: list[Operation] = []
        for template, item in self.spec["paths"].items():
            regex, literals = _template_regex(template)
            for method in HTTP_METHODS:
                op = item.get(method)
                if op is None:
                    continue
                body = op.get("requestBody") or {}
                pointers = {
                    ctype: f"/paths/{_escape_pointer(template)}/{method}/requestBody/content/"
                    f"{_escape_pointer(ctype)}/schema"
                    for ctype, content in (body.get("content") or {}).items()
                    if "schema" in content
                }
                responses = {}
                for status, resp in (op.get("responses") or {}).items():
                    base = f"/paths/{_escape_pointer(template)}/{method}/responses/{status}"
                    if "$ref" in resp:  # e.g. #/components/responses/ClientErrorResponse
                        base = resp["$ref"][1:]
                        resp = self.spec["components"]["responses"][base.rsplit("/", 1)[1]]
                    if "schema" in (resp.get("content") or {}).get("application/json", {}):
                        responses[status] = base + "/content/application~1json/schema"
                self.operations.append(
                    Operation(
                        method=method.upper(),
                        template=template,
                        operation_id=op.get("operationId", "?"),
                        regex=regex,
                        literal_segments=literals,
                        body_required=bool(body.get("required")),
                        body_pointers=pointers,
                        response_pointers=responses,
                    )
                )
        self._validators: dict[str, Draft202012Validator] = {}

    def match(self, method: str, path: str) -> Operation | None:
        """The operation for ``path`` (without ``/api/v10``); literal segments win
        over templates, so ``messages/@original`` beats ``messages/{message_id}``."""
        candidates = [
            op for op in self.operations if op.method == method.upper() and op.regex.match(path)
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda op: op.literal_segments)

    def _validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._validators:
            schema = {"$ref": f"{SPEC_URI}#{pointer}"}
            self._validators[pointer] = Draft202012Validator(schema, registry=self.registry)
        return self._validators[pointer]

    def validate(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str | None = None,
        has_body: bool = False,
        file_count: int = 0,
    ) -> list[str]:
        """Human-readable violations for one request (empty list: it is valid).

        ``path`` must not include the ``/api/v10`` prefix or the query string.
        ``content_type`` is ``application/json`` or ``multipart/form-data`` (then
        ``body`` is the decoded ``payload_json``), or None for no body.
        """
        where = f"{method.upper()} {path}"
        op = self.match(method, path)
        if op is None:
            return [f"{where}: no such operation in Discord's OpenAPI spec"]
        where = f"{where} ({op.operation_id})"
        if not has_body:
            if op.body_required:
                return [f"{where}: request body is required but none was sent"]
            return []
        if not op.body_pointers:
            return [f"{where}: this operation takes no request body, got {content_type}"]
        pointer = op.body_pointers.get(content_type or "")
        if pointer is None:
            return [f"{where}: content type {content_type!r} not accepted "
                    f"(spec allows {sorted(op.body_pointers)})"]
        problems = []
        if file_count > 10:
            problems.append(f"{where}: {file_count} files uploaded, at most 10 (files[0..9])")
        for error in self._validator(pointer).iter_errors(body):
            problems.append(f"{where}: {describe_error(error)}")
        return problems

    def validate_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        """Problems with a JSON response *the fake* sent (a fidelity check of the fake)."""
        op = self.match(method, path)
        if op is None:
            return []
        pointers = op.response_pointers
        pointer = pointers.get(str(status)) or pointers.get(f"{status // 100}XX") or pointers.get("default")
        where = f"response {status} to {method.upper()} {path} ({op.operation_id})"
        if pointer is None:
            return [f"{where}: the spec documents no JSON body for this status"]
        return [f"{where}: {describe_error(e)}" for e in self._validator(pointer).iter_errors(body)]


def describe_error(error: ValidationError) -> str:
    """Drill into anyOf/oneOf so the message names the field that is wrong."""
    while error.context:
        error = _most_relevant(error.context)
    pointer = "/" + "/".join(str(p) for p in error.absolute_path)
    instance = json.dumps(error.instance, default=str)
    if len(instance) > 120:
        instance = instance[:117] + "..."
    message = error.message
    if len(message) > 160:  # the message embeds the whole instance; say it shorter
        rule = json.dumps(error.validator_value, default=str)
        message = f"fails {error.validator}={rule[:80]}"
        if isinstance(error.instance, (str, list)):
            message += f" (length {len(error.instance)})"
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    return f"at {pointer}: {message} (schema {schema_path}; value {instance})"


def _is_discriminator_miss(error: ValidationError) -> bool:
    """A branch rejected because its ``type`` enum/const differs is the wrong branch."""
    return error.validator in ("enum", "const", "oneOf", "anyOf", "allOf") and list(
        error.relative_path
    )[-1:] == ["type"]


def _most_relevant(errors) -> ValidationError:
    """Pick the error to report among anyOf/oneOf branch errors.

    The branch the author meant is the one whose discriminator (``type``) matched,
    with the fewest type mismatches and errors; within it, the deepest error
    (jsonschema's ``relevance`` order).  We descend ourselves instead of calling
    ``best_match`` so this rule applies at every nesting level.
    """
    errors = list(errors)
    by_branch: dict = {}
    for err in errors:
        branch = err.relative_schema_path[0] if err.relative_schema_path else None
        by_branch.setdefault(branch, []).append(err)

    def score(branch_errors):
        return (
            any(_is_discriminator_miss(e) for e in branch_errors),
            sum(e.validator == "type" for e in branch_errors),
            len(branch_errors),
        )

    best = min(by_branch.values(), key=score)
    if all(_is_discriminator_miss(e) for e in best):
        first = best[0]
        return ValidationError(
            f"{first.instance!r} matches none of the variants' discriminator values",
            validator="enum",
            path=first.absolute_path,
            instance=first.instance,
            schema_path=first.absolute_schema_path,
        )
    return min(best, key=relevance)


@functools.lru_cache(maxsize=1)
def get_validator() -> SpecValidator:
    """The process-wide validator (loading and compiling the spec takes ~1 s)."""
    with open(SPEC_PATH, encoding="utf-8") as fh:
        return SpecValidator(json.load(fh))


def strip_api_prefix(path: str) -> str:
    return path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path
