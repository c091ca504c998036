"""The check before any load is sent: the target answers, serves the model and takes the key."""

from __future__ import annotations

import urllib.error

from loadgen.client.endpoint import Endpoint
from loadgen.fetch import fetch_json

AUTH_STATUSES = (401, 403)


class TargetUnreachable(Exception):
    pass


class TargetRefused(Exception):
    """The target turned the requests away (401/403) before any load was sent."""


class MissingModel(ValueError):
    pass


def refused_message(endpoint: Endpoint, status: int, detail: str) -> str:
    keyed = "with the API key given" if endpoint.api_key else "without an API key"
    said = endpoint.redact(detail[:120])
    return (
        f"{endpoint.base_url} refused the request {keyed} (HTTP {status}: {said}): "
        "set target.api_key_env in the scenario to the variable holding a valid key"
    )


def preflight(endpoint: Endpoint, timeout_s: float = 5.0) -> None:
    """Check the target answers and serves the model before any load is sent.

    Raises TargetUnreachable when nothing answers, MissingModel when /v1/models lists other
    models. A server without /v1/models (or that wants other auth for it) passes.
    """
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        listing = fetch_json(endpoint.base_url + "/models", timeout_s, headers)
    except urllib.error.HTTPError as e:
        if e.code in AUTH_STATUSES:
            raise TargetRefused(refused_message(endpoint, e.code, str(e.reason))) from None
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TargetUnreachable(f"{endpoint.base_url} does not answer: {reason}") from None
    except ValueError:
        return
    data = listing.get("data", []) if isinstance(listing, dict) else []
    served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    if served and endpoint.model not in served:
        listed = endpoint.redact(", ".join(map(str, served))[:400])
        raise MissingModel(
            f"{endpoint.base_url} does not serve model {endpoint.model!r}; it serves: "
            f"{listed} (set target.model in the scenario)"
        )
