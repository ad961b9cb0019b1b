"""HTTP client helpers for the command line: where the daemon is, and talking to it.

Sync ``httpx`` on purpose: each CLI command makes one or two requests and exits, so
there is nothing for trio to overlap. Every failure becomes a ``ClientError`` whose
message is fit to print after ``error: `` (no tracebacks, no stack of httpx internals).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from printfarmd import __version__
from printfarmd.config import load_config

if TYPE_CHECKING:
    import httpx

#: Seconds to wait for the daemon (connect, read and write each).
DEFAULT_TIMEOUT = 10.0
#: Where a packaged install keeps its config (see ``systemd/``).
SYSTEM_CONFIG = Path("/etc/printfarmd/config.toml")
#: The file ``printfarmd init`` writes by default, looked for in the working directory.
LOCAL_CONFIG_NAME = "printfarmd.toml"

ENV_URL = "PRINTFARMD_URL"
ENV_API_KEY = "PRINTFARMD_API_KEY"
ENV_CONFIG = "PRINTFARMD_CONFIG"

#: Where the daemon listens when bound to every interface: reach it through loopback.
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


class ClientError(Exception):
    """A request to the daemon failed; ``message`` is ready to print after ``error: ``.

    ``status`` is the HTTP status when the daemon answered, else ``None``; ``code`` the
    API error code when its body had one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Endpoint(msgspec.Struct, frozen=True):
    """A running daemon: base URL (no trailing slash) and the API key to send."""

    url: str
    api_key: str


def default_config_path(env: Mapping[str, str] = os.environ, cwd: Path | None = None) -> Path:
    """``$PRINTFARMD_CONFIG``, else ``./printfarmd.toml`` if it exists, else the system file.

    Used by ``serve``, ``check-config`` and the client commands alike, so they agree on
    which daemon "the" config describes.
    """
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    local = (cwd if cwd is not None else Path.cwd()) / LOCAL_CONFIG_NAME
    if local.is_file():
        return local
    return SYSTEM_CONFIG


def url_for(host: str, port: int) -> str:
    """The URL a local client uses to reach a daemon bound to ``host:port``."""
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host:  # an IPv6 literal needs brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{port}"


def resolve_endpoint(
    *,
    url: str | None,
    api_key: str | None,
    config_path: Path | None,
    env: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
) -> Endpoint:
    """Where the daemon is and which key to send: options, then environment, then config.

    The config file is read only if the URL or the key is still unknown; then it is
    ``config_path`` or ``default_config_path(env, cwd)``. Raises ``ConfigError`` if that
    file is missing or invalid.
    """
    url = url or env.get(ENV_URL) or None
    if api_key is None:
        api_key = env.get(ENV_API_KEY) or None
    if url is None or api_key is None:
        config = load_config(config_path or default_config_path(env, cwd))
        if url is None:
            url = url_for(config.server.host, config.server.port)
        if api_key is None:
            api_key = config.server.api_key
    return Endpoint(url=url.rstrip("/"), api_key=api_key)


def _api_error(body: object) -> tuple[str, str] | None:
    """``(code, message)`` from the API's canonical ``{"error": {...}}`` body, if it is one."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    code = error.get("code")
    return (code if isinstance(code, str) else "", error["message"])


def _field(body: object, key: str, kind: type) -> Any:
    """``body[key]`` if ``body`` is an object holding a ``kind`` there, else ``ClientError``."""
    if isinstance(body, dict) and isinstance(body.get(key), kind):
        return body[key]
    raise ClientError(f"unexpected response from printfarmd: no {key!r} {kind.__name__}")


class FarmClient:
    """A short-lived connection to the REST API. Use as a context manager.

    Every method raises ``ClientError`` on failure: daemon unreachable, timeout, an
    API error (its message), or a response that is not the JSON the API promises.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx  # on first use: `printfarmd serve` never needs it (issue 17)

        self.endpoint = endpoint
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=endpoint.url,
            headers={"X-Api-Key": endpoint.api_key, "User-Agent": f"printfarmd-cli/{__version__}"},
            timeout=timeout,
            transport=transport,
            # The daemon is on this machine or the LAN: an HTTP(S)_PROXY meant for the
            # internet must not swallow requests to it.
            trust_env=False,
        )

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- the REST API ------------------------------------------------------------------

    def orchestrator_status(self) -> dict[str, Any]:
        """``GET /api/orchestrator/status``: paused, queue_depth, jobs/printers by state."""
        body = self.request("GET", "/api/orchestrator/status")
        if not isinstance(body, dict):
            raise ClientError("unexpected response from printfarmd: status is not an object")
        return body

    def list_printers(self) -> list[dict[str, Any]]:
        """``GET /api/printers``: every configured printer's live view."""
        printers: list[dict[str, Any]] = _field(
            self.request("GET", "/api/printers"), "printers", list
        )
        return printers

    def list_jobs(
        self, statuses: Sequence[str] = (), *, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """``GET /api/jobs[?status=a,b][&limit=n]``: ``(jobs, total matching)``."""
        params: dict[str, str] = {}
        if statuses:
            params["status"] = ",".join(statuses)
        if limit is not None:
            params["limit"] = str(limit)
        body = self.request("GET", "/api/jobs", params=params)
        jobs: list[dict[str, Any]] = _field(body, "jobs", list)
        total = body.get("total", len(jobs))
        return jobs, total if isinstance(total, int) else len(jobs)

    def add_jobs(self, filename: str, **options: object) -> list[dict[str, Any]]:
        """``POST /api/jobs``: submit ``filename`` (relative to the gcodes folder).

        ``options`` whose value is ``None`` are left out so the daemon's defaults apply.
        Returns the created jobs (one per copy).
        """
        payload = {"filename": filename} | {k: v for k, v in options.items() if v is not None}
        jobs: list[dict[str, Any]] = _field(
            self.request("POST", "/api/jobs", json=payload), "jobs", list
        )
        return jobs

    def cancel_job(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        """``POST /api/jobs/{id}/cancel`` (with ``reason`` if given): the job as it is now."""
        body = {"reason": reason} if reason else None
        return self._object("POST", f"/api/jobs/{quote(job_id, safe='')}/cancel", json=body)

    def pause_job(self, job_id: str) -> dict[str, Any]:
        """``POST /api/jobs/{id}/pause``: answers once the printer paused it."""
        return self._object("POST", f"/api/jobs/{quote(job_id, safe='')}/pause")

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """``POST /api/jobs/{id}/resume``: answers once the printer resumed it."""
        return self._object("POST", f"/api/jobs/{quote(job_id, safe='')}/resume")

    def clear_printer(self, printer_id: str) -> dict[str, Any]:
        """``POST /api/printers/{id}/clear``: the plate is clear; the printer as it is now."""
        return self._object("POST", f"/api/printers/{quote(printer_id, safe='')}/clear")

    # -- upkeep (issue 16) -------------------------------------------------------------

    def list_spools(self) -> dict[str, Any]:
        """``GET /api/spools``: Spoolman's status, the bound spools, the pending reports."""
        return self._object("GET", "/api/spools")

    def bind_spool(self, printer_id: str, spool_id: int | None, tool: int = 0) -> dict[str, Any]:
        """``PUT /api/printers/{id}/spool``: the printer as it is now."""
        return self._object(
            "PUT",
            f"/api/printers/{quote(printer_id, safe='')}/spool",
            json={"spool_id": spool_id, "tool": tool},
        )

    def maintenance(self, printer_id: str | None = None, limit: int = 20) -> dict[str, Any]:
        """``GET /api/maintenance[?printer=id]``: counters, thresholds, the log."""
        params = {"limit": str(limit)} | ({"printer": printer_id} if printer_id else {})
        return self._object("GET", "/api/maintenance", params=params)

    def record_maintenance(
        self, printer_id: str, by: str, work: str, at: str | None = None
    ) -> dict[str, Any]:
        """``POST /api/printers/{id}/maintenance`` with the work done: the printer now."""
        body = {"by": by, "work": work} | ({"at": at} if at else {})
        return self._object(
            "POST", f"/api/printers/{quote(printer_id, safe='')}/maintenance", json=body
        )

    # -- plumbing ----------------------------------------------------------------------

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self.request(method, path, **kwargs)
        if not isinstance(body, dict):
            raise ClientError("unexpected response from printfarmd: not a JSON object")
        return body

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; the decoded JSON body of a 2xx answer, else ``ClientError``."""
        url = self.endpoint.url
        with _translate_errors(url, self.timeout):
            response = self._client.request(method, path, **kwargs)
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.is_error:
            parsed = _api_error(body)
            if parsed is not None:
                code, message = parsed
                if response.status_code == 401 and not self.endpoint.api_key:
                    # A config that keeps only the key's hash cannot give the CLI the key.
                    message += f" (pass --api-key or set ${ENV_API_KEY})"
                raise ClientError(message, status=response.status_code, code=code)
            raise ClientError(
                f"printfarmd at {url} answered HTTP {response.status_code} "
                f"{response.reason_phrase}".rstrip(),
                status=response.status_code,
            )
        if body is None:
            raise ClientError(
                f"unexpected response from printfarmd at {url}: not JSON "
                f"(HTTP {response.status_code})",
                status=response.status_code,
            )
        return body


@contextmanager
def _translate_errors(url: str, timeout: float) -> Iterator[None]:
    import httpx

    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise ClientError(f"cannot reach printfarmd at {url}") from None
    except httpx.TimeoutException:
        raise ClientError(f"printfarmd at {url} did not answer within {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ClientError(f"request to printfarmd at {url} failed: {exc}") from None
