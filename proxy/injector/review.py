"""``admission.k8s.io/v1`` AdmissionReview in, AdmissionReview with a response out. No I/O.

Only the creation of a Pod is ever mutated. Anything else the API server may send us (another
operation, another kind, after a selector change) is allowed unchanged, so a misconfigured
webhook never blocks unrelated objects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.injector.patch import Inject, Outcome, Pass, Refuse, SidecarTemplate, plan

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
# HTTP-like code the API server shows with a refusal: the pod as written is invalid.
REFUSED_CODE = 400


class BadReview(ValueError):
    """The request body is not an AdmissionReview we can answer (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The AdmissionReview to send back and the outcome behind it (for logs and metrics)."""

    body: dict[str, Any]
    outcome: Outcome
    pod: str


def answer(review: Any, template: SidecarTemplate) -> Answer:
    """Answer one AdmissionReview; :class:`BadReview` when it is not one."""
    if not isinstance(review, Mapping):
        raise BadReview("the body must be a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(f"expected apiVersion {API_VERSION} and kind {KIND}")
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid is missing")
    kind = request.get("kind")
    pod = request.get("object")
    name = _pod_name(request)
    if not (
        isinstance(kind, Mapping) and kind.get("group", "") == "" and kind.get("kind") == "Pod"
    ):
        outcome: Outcome = Pass("not a Pod")
    elif request.get("operation") != "CREATE":
        outcome = Pass(f"operation {request.get('operation')!r} is not CREATE")
    elif not isinstance(pod, Mapping):
        raise BadReview("request.object is not a Pod")
    else:
        outcome = plan(pod, template)
    return Answer(_body(request["uid"], outcome), outcome, name)


def _body(uid: str, outcome: Outcome) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": not isinstance(outcome, Refuse)}
    if isinstance(outcome, Inject):
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(outcome.patch).encode()).decode("ascii")
    elif isinstance(outcome, Refuse):
        response["status"] = {"code": REFUSED_CODE, "message": outcome.message}
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _pod_name(request: Mapping[str, Any]) -> str:
    """``namespace/name`` for logs; a pod created by a ReplicaSet has only a generateName."""
    pod = request.get("object")
    metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}*"
    return f"{request.get('namespace') or metadata.get('namespace') or ''}/{name}"
