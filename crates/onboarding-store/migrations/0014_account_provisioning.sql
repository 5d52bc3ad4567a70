-- Provisioning into the user store (an LDAP directory): account_states gains where each active
-- account's entry stands, written by the projection trigger from the same events the aggregate
-- folds (`UserActivated` makes it `pending`, then `UserProvisioned` `provisioned` and
-- `ProvisioningFailed` `failed`), so admins list accounts by it (`?provisioning=`) and
-- `onboard audit replay` rebuilds it from the log (docs/adr/0024).

ALTER TABLE account_states ADD COLUMN provisioning text
    CHECK (provisioning IN ('pending', 'provisioned', 'failed'));

-- Accounts activated before this migration wait for the provisioner, as new ones do.
UPDATE account_states SET provisioning = 'pending' WHERE state = 'Active';

CREATE INDEX account_states_by_provisioning ON account_states (provisioning, user_id)
    WHERE provisioning IS NOT NULL;

CREATE OR REPLACE FUNCTION project_account_state() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    account uuid := NEW.aggregate_id::uuid;
BEGIN
    CASE NEW.event_type
        WHEN 'UserInvited' THEN
            INSERT INTO account_states (user_id, state, state_since, username, domain, email, created_at)
            VALUES (account, 'Invited', NEW.recorded_at,
                    NEW.payload -> 'UserInvited' ->> 'username',
                    NEW.payload -> 'UserInvited' ->> 'domain',
                    NEW.payload -> 'UserInvited' ->> 'email',
                    NEW.recorded_at);
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
        ELSE
            UPDATE account_states
            SET state           = CASE NEW.event_type
                                      WHEN 'CodeIssued' THEN 'CodeIssued'
                                      WHEN 'CodeExpired' THEN 'Expired'
                                      WHEN 'CodeLocked' THEN 'Locked'
                                      WHEN 'InvitationRevoked' THEN 'Revoked'
                                      WHEN 'PasswordSet' THEN 'PasswordSet'
                                      WHEN 'UserActivated' THEN 'Active'
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
CREATE TRIGGER project_account_state
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND NEW.event_type IN
                                                ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked',
                                                 'InvitationRevoked', 'PasswordSet', 'UserActivated',
                                                 'InvitationMailSent', 'InvitationMailFailed',
                                                 'InvitationMailAbandoned', 'UserProvisioned',
                                                 'ProvisioningFailed'))
EXECUTE FUNCTION project_account_state();
