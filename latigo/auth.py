"""Bearer tokens for a Gordo behind Azure AD, by the client-credentials flow.

msal does the protocol, the token cache and the refresh before expiry; this module only
attaches the token to each request and turns Azure AD's refusals into Latigo's error
classes. The client secret never leaves msal: no message here quotes it, nor the token.
"""

from __future__ import annotations

import threading
from typing import Any

import msal
import requests
from requests.auth import AuthBase

from latigo.config import AzureAdConfig
from latigo.errors import Caught, PermanentError, TransientError, translated

# what a failed call to Azure AD is: a network failure, or an answer msal cannot read (a
# ValueError), is worth a retry; the message names the class only, never the request
AZURE_AD_ERRORS = (
    Caught((requests.RequestException, ValueError), TransientError, "cannot get a token from Azure AD: {name}"),
)
# Azure AD error codes that no retry can fix (a wrong id, secret, tenant or scope)
PERMANENT_CODES = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_scope", "invalid_request", "invalid_resource", "invalid_grant"}
)


class AzureAdAuth(AuthBase):
    def __init__(self, settings: AzureAdConfig, timeout: tuple[float, float], http_client: Any = None) -> None:
        self._settings = settings
        self._timeout = timeout
        self._http_client = http_client
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()  # msal's cache is shared by the executor's threads

    def _client(self) -> msal.ConfidentialClientApplication:
        """Made on first use: msal asks the authority for its endpoints right away, and Azure
        AD being down must not stop Latigo from starting."""
        if self._app is None:
            self._app = msal.ConfidentialClientApplication(
                self._settings.client_id,
                client_credential=self._settings.client_secret.get_secret_value(),
                authority=self._settings.authority,
                http_client=self._http_client,
                instance_discovery=self._settings.instance_discovery,
                timeout=self._timeout,  # msal's own HTTP client has none by default
            )
        return self._app

    def token(self) -> str:
        with translated(AZURE_AD_ERRORS), self._lock:
            result = self._client().acquire_token_for_client(scopes=[self._settings.scope])
        if "access_token" in result:
            return result["access_token"]
        code = str(result.get("error", "unknown_error"))
        # the description names the problem (and a trace id), never the secret
        description = next(iter(str(result.get("error_description", "")).splitlines()), "")[:300]
        error_class = PermanentError if code in PERMANENT_CODES else TransientError
        raise error_class(f"Azure AD refused a token ({code}): {description}")

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request
