"""An upstream identity system provisioning a user over SCIM 2.0 as any generic SCIM client does
(no password, no WSO2 askPassword), driven by the scim2-client library (python-scim2 project)
against the gateway: create, read, filter, search (POST /.search), PATCH, PUT (with the ETag it
read as If-Match).

Run by tests/e2e (scim.rs) through tests/run, which installs scim2-client into a venv
(tests/lib/test-services.sh: ensure_scim_client). Prints one JSON line: what the upstream saw.

Then it provisions a second user, who leaves before setting a password, and deletes them.

usage: provision.py --base-url URL --token TOKEN --user-name NAME --email ADDRESS
                    --leaver-name NAME --leaver-email ADDRESS
"""

import argparse
import json
import sys
import time

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import ListResponse, PatchOp, SCIMException, SearchRequest

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ONBOARDING = "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--user-name", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--leaver-name", required=True)
    parser.add_argument("--leaver-email", required=True)
    args = parser.parse_args()

    http = Client(
        base_url=f"{args.base_url}/scim2",
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=30,
    )
    scim = SyncSCIMClient(http)
    # Discovery: ServiceProviderConfig, ResourceTypes and Schemas; the User model (with its
    # extensions) is built from what the server publishes.
    scim.discover()
    user_model = scim.get_resource_model("User")
    saw = {
        "resource_types": [rt.id for rt in scim.provider.resource_types],
        "filter_supported": bool(scim.provider.config.filter.supported),
    }

    # A generic create: no password and no WSO2 extension; it is an invitation.
    payload = {
        "schemas": [USER],
        "userName": args.user_name,
        "name": {"givenName": "Jane", "familyName": "Doe"},
        "emails": [{"value": args.email, "primary": True, "type": "work"}],
    }
    created = scim.create(user_model.model_validate(payload))
    saw["created"] = created.model_dump(mode="json")

    fetched = scim.query(user_model, created.id)
    saw["fetched"] = fetched.model_dump(mode="json")

    found = scim.query(
        user_model,
        query_parameters={"filter": f'userName eq "{args.user_name.upper()}"'},
    )
    assert isinstance(found, ListResponse), found
    saw["filter_total"] = found.total_results
    saw["filter_ids"] = [r.id for r in found.resources or []]

    # POST /Users/.search: a filter the library checks against the model, sorted.
    searched = scim.search(
        user_model,
        SearchRequest[user_model](
            filter=f'emails.value ew "{args.email.split("@")[1]}" and userName pr',
            sort_by="userName",
        ),
    )
    saw["search_ids"] = [r.id for r in searched.resources or []]

    # PATCH: Jane's family name changes.
    modified = scim.modify(
        user_model,
        created.id,
        PatchOp[user_model](
            operations=[{"op": "replace", "path": "name.familyName", "value": "Doe-Smith"}]
        ),
    )
    saw["modified"] = modified.model_dump(mode="json")

    # PUT: the whole User again, with a display name, and the ETag it was read with as
    # If-Match. Read once the invitation mail is recorded: that changes the User's version.
    deadline = time.monotonic() + 60
    while True:
        current = scim.query(user_model, created.id)
        onboarding = current.model_dump(mode="json").get(ONBOARDING, {})
        if onboarding.get("emailDelivery") == "sent":
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the invitation mail was not recorded as sent: {onboarding}")
        time.sleep(0.25)
    current.display_name = "Jane D."
    replaced = scim.replace(current)
    saw["replaced"] = replaced.model_dump(mode="json")

    # The same userName again: the server must refuse it as a uniqueness violation.
    try:
        again = scim.create(user_model.model_validate(payload))
        saw["duplicate"] = {"unexpected_success": again.model_dump(mode="json")}
    except SCIMException as exc:
        error = exc.to_error()
        saw["duplicate"] = {
            "status": error.status,
            "scim_type": error.scim_type,
            "detail": error.detail,
        }

    # An unknown id: a SCIM 404.
    try:
        scim.query(user_model, "00000000-0000-0000-0000-000000000000")
        saw["unknown"] = "unexpected success"
    except SCIMException as exc:
        saw["unknown"] = {"status": exc.to_error().status}

    # A user who leaves before setting a password: deleted, then gone for SCIM.
    leaver = scim.create(
        user_model.model_validate(
            {
                **payload,
                "userName": args.leaver_name,
                "emails": [{"value": args.leaver_email, "primary": True, "type": "work"}],
            }
        )
    )
    scim.delete(user_model, leaver.id)
    saw["deleted"] = {"id": leaver.id}
    try:
        scim.query(user_model, leaver.id)
        saw["deleted"]["read_back"] = "unexpected success"
    except SCIMException as exc:
        saw["deleted"]["read_back"] = exc.to_error().status
    gone = scim.query(
        user_model, query_parameters={"filter": f'userName eq "{args.leaver_name}"'}
    )
    saw["deleted"]["filter_total"] = gone.total_results
    try:
        scim.delete(user_model, leaver.id)
        saw["deleted"]["again"] = "unexpected success"
    except SCIMException as exc:
        saw["deleted"]["again"] = exc.to_error().status

    print(json.dumps(saw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
