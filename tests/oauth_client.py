"""An OAuth 2.0 client written elsewhere (oauthlib and requests-oauthlib, as
Debian packages them) against the reference service, for
tests/reference_service.rs. Prints one JSON object of what it saw."""
import json
import os
import sys

import requests
from oauthlib.oauth2 import InvalidGrantError, LegacyApplicationClient
from requests_oauthlib import OAuth2Session

os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # a loopback test server
BASE = sys.argv[1]
CLIENT_ID = "reference-app"
TOKEN_URL = BASE + "/oauth/token"
seen = {}

# Sign in (the password grant stands in for the service's own sign-in).
client = LegacyApplicationClient(client_id=CLIENT_ID)
session = OAuth2Session(client=client)
first = session.fetch_token(token_url=TOKEN_URL, username="alice", password="wonderland",
                            client_id=CLIENT_ID, include_client_id=True)
seen["signed_in"] = "refresh_token" in first and first["token_type"] == "Bearer"

# Refresh (RFC 6749 §6): a new refresh token each time.
second = session.refresh_token(TOKEN_URL, refresh_token=first["refresh_token"],
                               client_id=CLIENT_ID, include_client_id=True)
seen["rotated"] = second["refresh_token"] != first["refresh_token"]
seen["sessions"] = len(session.get(BASE + "/sessions").json()["sessions"])

# The old refresh token replayed after the grace: reuse, so the family dies.
replayer = OAuth2Session(client_id=CLIENT_ID)
try:
    replayer.refresh_token(TOKEN_URL, refresh_token=first["refresh_token"],
                           client_id=CLIENT_ID, include_client_id=True)
    seen["replay"] = "accepted"
except InvalidGrantError:
    seen["replay"] = "invalid_grant"
try:
    session.refresh_token(TOKEN_URL, refresh_token=second["refresh_token"],
                          client_id=CLIENT_ID, include_client_id=True)
    seen["after_replay"] = "accepted"
except InvalidGrantError:
    seen["after_replay"] = "invalid_grant"

# Two devices signed in; another client presenting the laptop's refresh
# token gets invalid_grant (the session is bound to its client) and the
# laptop refreshes on; the phone signs out every other device.
laptop = OAuth2Session(client=LegacyApplicationClient(client_id=CLIENT_ID))
laptop_token = laptop.fetch_token(token_url=TOKEN_URL, username="alice", password="wonderland",
                                  client_id=CLIENT_ID, include_client_id=True, device="laptop")
phone = OAuth2Session(client=LegacyApplicationClient(client_id=CLIENT_ID))
phone.fetch_token(token_url=TOKEN_URL, username="alice", password="wonderland",
                  client_id=CLIENT_ID, include_client_id=True, device="phone")
intruder = OAuth2Session(client_id="other-app")
try:
    intruder.refresh_token(TOKEN_URL, refresh_token=laptop_token["refresh_token"],
                           client_id="other-app", include_client_id=True)
    seen["other_client"] = "accepted"
except InvalidGrantError:
    seen["other_client"] = "invalid_grant"
laptop_token = laptop.refresh_token(TOKEN_URL, refresh_token=laptop_token["refresh_token"],
                                    client_id=CLIENT_ID, include_client_id=True)
devices = phone.get(BASE + "/sessions").json()["sessions"]
seen["devices"] = sorted(d["device"] for d in devices if not d["revoked"] and d["device"])
seen["clients"] = sorted({d["client_id"] for d in devices})
seen["signed_out_others"] = phone.post(BASE + "/sessions/sign-out-others").json()["signed_out"]
try:
    laptop.refresh_token(TOKEN_URL, refresh_token=laptop_token["refresh_token"],
                         client_id=CLIENT_ID, include_client_id=True)
    seen["laptop_after_sign_out"] = "accepted"
except InvalidGrantError:
    seen["laptop_after_sign_out"] = "invalid_grant"
seen["phone_after_sign_out"] = phone.get(BASE + "/sessions").status_code

# Sign in again, then revoke the refresh token (RFC 7009) as the client does.
fresh = OAuth2Session(client=LegacyApplicationClient(client_id=CLIENT_ID))
third = fresh.fetch_token(token_url=TOKEN_URL, username="alice", password="wonderland",
                          client_id=CLIENT_ID, include_client_id=True)
url, headers, body = LegacyApplicationClient(client_id=CLIENT_ID).prepare_token_revocation_request(
    BASE + "/oauth/revoke", third["refresh_token"], token_type_hint="refresh_token")
body += "&client_id=" + CLIENT_ID
seen["revoke_status"] = requests.post(url, headers=headers, data=body).status_code
try:
    fresh.refresh_token(TOKEN_URL, refresh_token=third["refresh_token"],
                        client_id=CLIENT_ID, include_client_id=True)
    seen["after_revoke"] = "accepted"
except InvalidGrantError:
    seen["after_revoke"] = "invalid_grant"
print(json.dumps(seen))
