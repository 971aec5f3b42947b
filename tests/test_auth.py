"""Gordo behind Azure AD: bearer tokens by client credentials, cached and refreshed, and no
secret ever in a log line or an error message.

Azure AD cannot run here, so a small HTTPS server made for the test answers as its token
endpoint does (TLS from trustme, since msal insists on https); msal itself is real, and so
are Gordo and the database.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
import threading
from datetime import timedelta
from time import monotonic
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests
import trustme

from latigo import calls
from latigo.components import build
from latigo.config import AzureAdConfig, GordoConfig
from latigo.errors import PermanentError, TransientError
from latigo.providers.models.gordo import GordoModels
from tests.clock import Clock
from tests.test_pipeline import NOW, make_config

pytestmark = pytest.mark.integration  # every test calls the real Gordo server

# what must never show anywhere
SECRET = "s3cr3t-Client-Value-never-log-me"
SCOPE = "api://gordo/.default"


class FakeAzureAd:
    """The token endpoint's side of the client-credentials flow, over HTTPS."""

    def __init__(self, ca: trustme.CA) -> None:
        self.posts: list[dict[str, str]] = []
        self.expires_in = 3600
        self.refuse: str | None = None
        # answer 200 OK, then a header byte every 0.2 s, until the client gives up
        self.drip_headers = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, document: dict) -> None:
                body = json.dumps(document).encode()
                self.send_response(400 if "error" in document else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # OpenID discovery
                base = f"https://localhost:{self.server.server_address[1]}/tenant"
                self._json({"token_endpoint": f"{base}/oauth2/v2.0/token",
                            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize", "issuer": f"{base}/v2.0"})

            def do_POST(self) -> None:
                form = dict(pair.split("=", 1) for pair in self.rfile.read(int(self.headers["Content-Length"])).decode().split("&"))
                fake.posts.append(form)
                if fake.drip_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    try:
                        for byte in b"Content-Type: application/json\r\n" * 100:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            threading.Event().wait(0.2)
                    except OSError:  # the client gave up
                        pass
                    self.close_connection = True
                elif fake.refuse:
                    self._json({"error": fake.refuse, "error_description": "AADSTS7000215: Invalid client secret provided."})
                else:
                    self._json({"access_token": f"token-{len(fake.posts)}", "token_type": "Bearer",
                                "expires_in": fake.expires_in})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.authority = f"https://localhost:{self.server.server_address[1]}/tenant"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def azure_ad(ca) -> Iterator[FakeAzureAd]:
    fake = FakeAzureAd(ca)
    yield fake
    fake.close()


@pytest.fixture
def trusting(ca, tmp_path) -> requests.Session:
    """An HTTP client for msal that trusts the fake's CA (a real one trusts the system's)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    session = requests.Session()
    session.verify = str(bundle)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, overrides verify
    return session


def settings(azure_ad: FakeAzureAd) -> AzureAdConfig:
    return AzureAdConfig(
        authority=azure_ad.authority, client_id="latigo", client_secret=SECRET, scope=SCOPE, instance_discovery=False
    )


def test_calls_carry_a_cached_bearer_token(azure_ad, trusting, gordo_server):
    gordo = GordoModels(GordoConfig(base_url=gordo_server.base_url, auth=settings(azure_ad)), auth_http_client=trusting)
    assert gordo.latest_revision("demo") == gordo_server.revision
    assert gordo.models("demo") == sorted(gordo_server.models)
    prepared = requests.Request("GET", gordo_server.base_url).prepare()
    assert gordo._session.auth(prepared).headers["Authorization"] == "Bearer token-1"
    # three calls, one token: msal's cache
    assert len(azure_ad.posts) == 1
    assert azure_ad.posts[0]["grant_type"] == "client_credentials" and azure_ad.posts[0]["client_id"] == "latigo"


def test_a_token_close_to_expiry_is_refreshed_before_use(azure_ad, trusting, gordo_server):
    azure_ad.expires_in = 60  # msal refreshes tokens with less than five minutes left
    gordo = GordoModels(GordoConfig(base_url=gordo_server.base_url, auth=settings(azure_ad)), auth_http_client=trusting)
    gordo.latest_revision("demo")
    gordo.models("demo")
    assert len(azure_ad.posts) == 2


def test_refusals_and_outages_map_to_error_classes_without_the_secret(azure_ad, trusting, gordo_server):
    def fresh() -> GordoModels:  # msal remembers a refusal for a while (throttling): a new client each time
        return GordoModels(GordoConfig(base_url=gordo_server.base_url, auth=settings(azure_ad)), auth_http_client=trusting)

    azure_ad.refuse = "invalid_client"
    with pytest.raises(PermanentError, match="invalid_client") as refused:
        fresh().latest_revision("demo")
    azure_ad.refuse = "temporarily_unavailable"
    with pytest.raises(TransientError, match="temporarily_unavailable") as unavailable:
        fresh().latest_revision("demo")
    azure_ad.close()
    with pytest.raises(TransientError, match="cannot get a token") as down:
        GordoModels(GordoConfig(base_url=gordo_server.base_url, auth=settings(azure_ad)),
                    auth_http_client=trusting).latest_revision("demo")
    for error in (refused, unavailable, down):
        assert SECRET not in str(error.value) and SECRET not in repr(error.value)


def test_no_secret_or_token_in_any_log_line(azure_ad, trusting, gordo_server, tmp_path, caplog, monkeypatch):
    config = make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url)
    config = config.model_copy(update={"models": config.models.model_copy(update={"auth": settings(azure_ad)})})
    caplog.set_level(logging.DEBUG)
    for noisy in ("urllib3", "msal", "latigo"):
        logging.getLogger(noisy).setLevel(logging.DEBUG)
    from latigo.demo.feeder import feed
    from latigo.executor import Executor
    from latigo.scheduler import Scheduler

    clock = Clock(NOW)
    parts = build(config.model_copy(update={"models": config.models.model_copy(update={"auth": None})}), clock=clock)
    # the same components, with Gordo reached through Azure AD (msal trusting the fake's CA, as above)
    parts.model_info = parts.model_execution = GordoModels(config.models, auth_http_client=trusting)
    try:
        feed(parts.sensors, NOW - timedelta(hours=2), NOW)
        Scheduler(config, parts.model_info, parts.ledger, parts.queue, clock).tick()
        Executor.from_components(parts).run(threading.Event(), until_idle=True)
        azure_ad.refuse = "invalid_client"
        with pytest.raises(PermanentError):
            GordoModels(config.models, auth_http_client=trusting).latest_revision("demo")
    finally:
        parts.close()
    assert len(azure_ad.posts) >= 2  # the token was really fetched (and refused) during the run
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "tick:" in logged and "done in" in logged  # the log did capture the run
    assert SECRET not in logged
    assert "token-1" not in logged

    # the effective configuration shown to operators masks it too
    config_file = tmp_path / "latigo.yaml"
    config_file.write_text(
        f"models:\n  auth:\n    authority: {azure_ad.authority}\n    client_id: latigo\n"
        f"    client_secret: {SECRET}\n    scope: {SCOPE}\n    instance_discovery: false\n"
    )
    shown = subprocess.run([sys.executable, "-m", "latigo", "--config", str(config_file), "config", "show"],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert shown.returncode == 0, shown.stderr
    assert "client_secret: '**********'" in shown.stdout and SECRET not in shown.stdout + shown.stderr


def test_a_token_endpoint_that_drips_its_headers_ends_within_the_gordo_calls_limit(azure_ad, ca, tmp_path, gordo_server):
    """The token is fetched inside the Gordo call, through a watched session: its deadline
    (connect + read timeout, 2 s here) covers the token endpoint too."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    watched = calls.session()
    watched.verify, watched.trust_env = str(bundle), False
    azure_ad.drip_headers = True
    gordo = GordoModels(
        GordoConfig(base_url=gordo_server.base_url, auth=settings(azure_ad), connect_timeout=1, read_timeout=1),
        auth_http_client=watched,
    )
    started = monotonic()
    with pytest.raises(TransientError):
        gordo.latest_revision("demo")
    assert monotonic() - started < 3.5 and azure_ad.posts
