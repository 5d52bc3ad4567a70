//! The discovery documents (RFC 7644 §4): `ServiceProviderConfig`, `ResourceTypes` and
//! `Schemas`, built in code from what this service supports. `base` is the public `…/scim2`.

use serde_json::{json, Value};

use super::filter::MAX_RESULTS;
use super::{ENTERPRISE, ONBOARDING, USER};

/// What this service supports, for clients that discover it.
pub(super) fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/onboard/onboard/blob/main/docs/api.md#scim-20",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "sort": {"supported": true},
        "changePassword": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Admin token",
            "description": "Authorization: Bearer <admin token>, the same tokens and scopes as /api/v1 (invite to create and change, read to read, revoke to delete or deprovision)",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

/// The one resource type: User, with the enterprise and onboarding extensions.
pub(super) fn resource_type(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A user invited to set a password",
        "schema": USER,
        "schemaExtensions": [
            {"schema": ENTERPRISE, "required": false},
            {"schema": ONBOARDING, "required": false},
        ],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
    })
}

/// A single-valued, optional, case-insensitive attribute, as `schemas` describes it.
fn attr(name: &str, kind: &str, description: &str, mutability: &str, returned: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": description,
        "required": false,
        "caseExact": false,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": "none",
    })
}

/// The User schema and its two extensions.
pub(super) fn schemas(base: &str) -> Vec<Value> {
    let mut user_name = attr(
        "userName",
        "string",
        "Unique name of the user in its domain; `DOMAIN/name` for a domain other than PRIMARY. Set at creation",
        "immutable",
        "always",
    );
    user_name["required"] = json!(true);
    user_name["uniqueness"] = json!("server");
    let mut name = attr("name", "complex", "The user's name", "readWrite", "default");
    name["subAttributes"] = json!([
        attr(
            "formatted",
            "string",
            "The full name",
            "readWrite",
            "default"
        ),
        attr(
            "familyName",
            "string",
            "Family name",
            "readWrite",
            "default"
        ),
        attr("givenName", "string", "Given name", "readWrite", "default"),
    ]);
    let mut emails = attr(
        "emails",
        "complex",
        "Email addresses; the invitation goes to the primary one. A new address for an open invitation re-issues its link to that address",
        "readWrite",
        "default",
    );
    emails["multiValued"] = json!(true);
    emails["subAttributes"] = json!([
        attr("value", "string", "The address", "readWrite", "default"),
        attr(
            "type",
            "string",
            "work, home or other",
            "readWrite",
            "default"
        ),
        attr(
            "primary",
            "boolean",
            "The address the invitation is mailed to",
            "readWrite",
            "default"
        ),
    ]);
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER,
        "name": "User",
        "description": "User account",
        "attributes": [
            user_name,
            name,
            attr("displayName", "string", "Name shown to others", "readWrite", "default"),
            emails,
            attr("locale", "string", "Language of the user's mails, e.g. en or de-AT; set at creation", "immutable", "default"),
            attr("timezone", "string", "IANA time zone, e.g. Europe/Berlin; the mail states the link's expiry in it; set at creation", "immutable", "default"),
            attr("active", "boolean", "false until the user set a password from the mailed link; set false to deprovision (an open invitation is revoked, an active account disabled), true to enable a disabled account", "readWrite", "default"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER}")},
    });
    let mut ask = attr(
        "askPassword",
        "boolean",
        "WSO2's switch: the user is mailed a link to choose a password. Optional (a create without a password always invites), unless the service requires it",
        "writeOnly",
        "never",
    );
    ask["required"] = json!(false);
    let enterprise = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE,
        "name": "EnterpriseUser",
        "description": "Enterprise User (with WSO2's askPassword)",
        "attributes": [ask],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ENTERPRISE}")},
    });
    let onboarding = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ONBOARDING,
        "name": "Onboarding",
        "description": "Where the user's invitation stands",
        "attributes": [
            attr("state", "string", "Invited, CodeIssued, Expired, Locked, Revoked, PasswordSet, Active or Disabled", "readOnly", "default"),
            attr("codeExpiresAt", "dateTime", "When the mailed link expires", "readOnly", "default"),
            attr("emailDelivery", "string", "The invitation mail: queued, sent or failed", "readOnly", "default"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ONBOARDING}")},
    });
    vec![user, enterprise, onboarding]
}

/// One schema by its URN.
pub(super) fn schema(base: &str, id: &str) -> Option<Value> {
    schemas(base).into_iter().find(|s| s["id"] == id)
}
