-- SCIM updates and deprovisions accounts (docs/adr/0027): an active account can be disabled and
-- enabled again (`AccountDisabled`, `AccountEnabled`), an account's address can change
-- (`EmailChanged`) and its claims can be replaced (`ClaimsUpdated`). account_states follows
-- them, and keeps the `external_id` claim, which SCIM filters and sorts on. The projection keeps
-- what 0014 added (the provisioning state).

ALTER TABLE account_states ADD COLUMN external_id text;

UPDATE account_states a
SET external_id = e.payload -> 'UserInvited' -> 'claims' ->> 'external_id'
FROM events e
WHERE e.aggregate_type = 'Onboarding'
  AND e.event_type = 'UserInvited'
  AND e.aggregate_id = a.user_id::text;

-- SCIM's `externalId eq "…"`, the look-up Entra ID and Okta make before they create a user.
CREATE INDEX account_states_by_external_id ON account_states (external_id) WHERE external_id IS NOT NULL;

CREATE OR REPLACE FUNCTION project_account_state() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    account uuid := NEW.aggregate_id::uuid;
BEGIN
    CASE NEW.event_type
        WHEN 'UserInvited' THEN
            INSERT INTO account_states (user_id, state, state_since, username, domain, email, created_at,
                                        external_id)
            VALUES (account, 'Invited', NEW.recorded_at,
                    NEW.payload -> 'UserInvited' ->> 'username',
                    NEW.payload -> 'UserInvited' ->> 'domain',
                    NEW.payload -> 'UserInvited' ->> 'email',
                    NEW.recorded_at,
                    NEW.payload -> 'UserInvited' -> 'claims' ->> 'external_id');
        WHEN 'InvitationMailSent', 'InvitationMailFailed', 'InvitationMailAbandoned' THEN
            UPDATE account_states
            SET delivery = CASE NEW.event_type
                               WHEN 'InvitationMailSent' THEN 'sent'
                               WHEN 'InvitationMailFailed' THEN 'failed'
                               ELSE 'abandoned'
                END
            WHERE user_id = account;
        WHEN 'UserProvisioned', 'ProvisioningFailed' THEN
            UPDATE account_states
            SET provisioning = CASE NEW.event_type
                                   WHEN 'UserProvisioned' THEN 'provisioned'
                                   ELSE 'failed'
                END
            WHERE user_id = account;
        WHEN 'EmailChanged' THEN
            UPDATE account_states
            SET email = NEW.payload -> 'EmailChanged' ->> 'email'
            WHERE user_id = account;
        WHEN 'ClaimsUpdated' THEN
            UPDATE account_states
            SET external_id = NEW.payload -> 'ClaimsUpdated' -> 'claims' ->> 'external_id'
            WHERE user_id = account;
        ELSE
            UPDATE account_states
            SET state           = CASE NEW.event_type
                                      WHEN 'CodeIssued' THEN 'CodeIssued'
                                      WHEN 'CodeExpired' THEN 'Expired'
                                      WHEN 'CodeLocked' THEN 'Locked'
                                      WHEN 'InvitationRevoked' THEN 'Revoked'
                                      WHEN 'PasswordSet' THEN 'PasswordSet'
                                      WHEN 'UserActivated' THEN 'Active'
                                      WHEN 'AccountDisabled' THEN 'Disabled'
                                      WHEN 'AccountEnabled' THEN 'Active'
                END,
                state_since     = NEW.recorded_at,
                code_expires_at = (NEW.payload -> 'CodeIssued' ->> 'expires_at')::timestamptz,
                delivery        = CASE WHEN NEW.event_type = 'CodeIssued' THEN 'queued' ELSE delivery END,
                provisioning    = CASE WHEN NEW.event_type = 'UserActivated' THEN 'pending' ELSE provisioning END
            WHERE user_id = account;
        END CASE;
    RETURN NULL;
END
$$;

DROP TRIGGER project_account_state ON events;

-- AFTER the BEFORE INSERT trigger of 0008 has drawn the event's position and time.
CREATE TRIGGER project_account_state
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND NEW.event_type IN
                                                ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked',
                                                 'InvitationRevoked', 'PasswordSet', 'UserActivated',
                                                 'InvitationMailSent', 'InvitationMailFailed',
                                                 'InvitationMailAbandoned', 'UserProvisioned',
                                                 'ProvisioningFailed', 'AccountDisabled',
                                                 'AccountEnabled', 'EmailChanged', 'ClaimsUpdated'))
EXECUTE FUNCTION project_account_state();
