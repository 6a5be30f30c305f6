"""Schemathesis hooks for the legacy contract run (e2e/schemathesis/legacy.sh).

As in hooks.py: every `/v1/users/me` case gets a member of its own, registered
and logged in at the emulator just before the call, and 400s for the rules a
JSON schema cannot state (common password, password equal to the email, phone
outside its numbering plan, a synced hash in a scheme idbase does not verify)
are the only accepted rejections of schema-valid data.
"""

import os
import secrets

import requests
import schemathesis

BASE_URL = os.environ["IDBASE_ST_URL"].rstrip("/")
GATEWAY_TOKEN = os.environ["IDBASE_ST_GATEWAY_TOKEN"]

POLICY_REJECTIONS = (
    "invalid password: is too common",
    "invalid password: must not be the email address",
    "invalid phone: ",
    "invalid password_hash: ",
)


def _fresh_member_token() -> str:
    email = f"st-{secrets.token_hex(8)}@example.com"
    password = secrets.token_urlsafe(18)
    headers = {"Idbase-Gateway-Token": GATEWAY_TOKEN}
    body = {"email": email, "password": password}
    requests.post(f"{BASE_URL}/v1/users", json=body, headers=headers, timeout=30).raise_for_status()
    login = requests.post(f"{BASE_URL}/v1/sessions", json=body, headers=headers, timeout=30)
    login.raise_for_status()
    return login.json()["access_token"]


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a 400 for a documented policy rule on schema-valid data."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 400:
        return True
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        return True
    return not detail.startswith(POLICY_REJECTIONS)


@schemathesis.auth(refresh_interval=None).apply_to(path="/v1/users/me")
class FreshMember:
    def get(self, case, ctx):
        return _fresh_member_token()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
