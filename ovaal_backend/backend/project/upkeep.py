"""Keeping the Label Studio project in shape: uncertainty sampling on the current model version, and our
basic-auth header on the webhook Label Studio creates for this backend (it creates it without)."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from .context import ProjectContext
from .state import QUERY_VIEW_FILTERS, QUERY_VIEW_ORDERING, QUERY_VIEW_TITLE, Phase, version_name

log = logging.getLogger(__name__)


class Upkeep:
    """The repairs one project needs, done by its worker."""

    def __init__(self, ctx: ProjectContext) -> None:
        self.ctx = ctx

    def check_due(self) -> bool:
        """True when the project should be read back now (some seconds after /setup or a publish)."""
        due = self.ctx.state.check_project_at
        return due is not None and time.time() >= due

    def check(self) -> None:
        """Read the Label Studio project back once and repair it.

        Connecting a model sets the project's version to the model's title after /setup (which may land after our
        update), and the webhook Label Studio creates for the model carries no basic-auth header.
        """
        self.ensure_webhook_auth()
        self.ensure_query_view()
        if self.ctx.state.phase is not Phase.NEW:
            self.sync(check=True)
        self.ctx.update(check_project_at=None)

    def ensure_query_view(self) -> None:
        """The Data Manager tab that lists only query tasks (added once; added again if an admin deleted it).

        A tab with our title but another id is ours from a call whose answer was lost (a timeout, a kill): it is
        adopted, never added twice.
        """
        views = self.ctx.client.list_views(self.ctx.project_id)
        if any(int(v.get("id", -1)) == self.ctx.state.query_view_id for v in views):
            return
        titled = [int(v["id"]) for v in views if (v.get("data") or {}).get("title") == QUERY_VIEW_TITLE]
        if titled:
            self.ctx.update(query_view_id=titled[0])
            log.info("project %s: adopted the Data Manager tab %r (view %d)", self.ctx.key, QUERY_VIEW_TITLE,
                     titled[0])
            return
        view_id = self.ctx.client.create_view(self.ctx.project_id, QUERY_VIEW_TITLE, QUERY_VIEW_FILTERS,
                                               QUERY_VIEW_ORDERING)
        self.ctx.update(query_view_id=view_id)
        log.info("project %s: added the Data Manager tab %r (view %d)", self.ctx.key, QUERY_VIEW_TITLE, view_id)

    def ensure_webhook_auth(self) -> None:
        """Give the project's webhook to this backend our basic-auth header.

        Only the webhook of the ML backend entry that is this backend gets it: connected with our BASIC_AUTH_USER
        and with BACKEND_URL as its URL, or (without BACKEND_URL) at an address Label Studio called /setup at. Another
        backend connected with the same user name never receives our password.
        """
        config, client, pid = self.ctx.config, self.ctx.client, self.ctx.project_id
        if not config.basic_auth_user:
            return
        token = base64.b64encode(f"{config.basic_auth_user}:{config.basic_auth_pass}".encode()).decode()
        header = f"Basic {token}"
        ours = {str(ml.get("url", "")).rstrip("/") + "/webhook" for ml in client.list_ml_backends(pid)
                if ml.get("auth_method") == "BASIC_AUTH" and ml.get("basic_auth_user") == config.basic_auth_user
                and self.is_own_url(str(ml.get("url", "")))}
        if not ours:
            log.warning("project %s: no ML backend connected with basic-auth user %r at this backend's address "
                        "(BACKEND_URL=%r, /setup reached us as %s); webhooks to this backend will be refused (401) "
                        "unless they carry the header", self.ctx.key, config.basic_auth_user, config.backend_url,
                        self.ctx.state.setup_hosts or "nothing yet")
            return
        for hook in client.list_webhooks(pid):
            headers = dict(hook.get("headers") or {})
            if hook.get("url") in ours and headers.get("Authorization") != header:
                client.update_webhook(int(hook["id"]), headers={**headers, "Authorization": header})
                log.info("project %s: added our basic-auth header to webhook %s (%s)", self.ctx.key, hook["id"],
                         hook["url"])

    def is_own_url(self, url: str) -> bool:
        """Whether an ML backend URL Label Studio lists is this backend's: BACKEND_URL when set, else one whose
        host and port Label Studio sent /setup to (the Host header of those calls)."""
        if self.ctx.config.backend_url:
            return url.rstrip("/") == self.ctx.config.backend_url.rstrip("/")
        listed = endpoint(url)
        return bool(listed[0]) and listed in {endpoint(f"//{host}") for host in self.ctx.state.setup_hosts}

    def sync(self, check: bool) -> None:
        """Uncertainty sampling and the current version on the Label Studio project.

        The version is set only once a prediction of it exists (Label Studio refuses it before). With ``check``
        the project is read first and only updated where it differs.
        """
        state = self.ctx.state
        fields: dict[str, Any] = {"sampling": "Uncertainty sampling"}
        if state.version in state.versions_in_label_studio:
            fields["model_version"] = version_name(state.version)
        if check:
            current = self.ctx.client.get_project(self.ctx.project_id)
            fields = {k: v for k, v in fields.items() if current.get(k) != v}
            if not fields:
                return
            log.info("project %s: Label Studio's project had %s; setting it back",
                     self.ctx.key, {k: current.get(k) for k in fields})
        self.ctx.client.update_project(self.ctx.project_id, **fields)

    def mark_version(self, version: int) -> None:
        """Remember that Label Studio holds a prediction of ``version`` (so the project may be switched to it)."""
        with self.ctx.lock:
            versions = self.ctx.state.versions_in_label_studio
            if version not in versions:
                self.ctx.update(versions_in_label_studio=sorted({*versions, version}))


def endpoint(url: str) -> tuple[str, int | None]:
    """``(host, port)`` of a URL (or ``//host:port``) in lower case, the port None when it is the scheme's default or
    absent: a Host header omits the default port, a URL may spell it out."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "", None
    if port == {"http": 80, "https": 443}.get(parts.scheme):
        port = None
    return (parts.hostname or "").rstrip("."), port
