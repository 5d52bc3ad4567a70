-- account_states was a view over the whole log: every pass of the expiry scheduler and every page
-- of the admin list scanned all state-changing events (2 s a pass at 200,000 accounts). It is now
-- a table that a trigger writes in the append's transaction, from the same events and by the same
-- rules as the view, so it still cannot lag behind the log, and `onboard audit replay` still
-- rebuilds it from the log and compares (docs/adr/0012).

CREATE TABLE account_states_table
(
    user_id         uuid PRIMARY KEY,
    state           text        NOT NULL,
    state_since     timestamptz NOT NULL,
    code_expires_at timestamptz,
    username        text,
    domain          text,
    email           text,
    created_at      timestamptz NOT NULL,
    delivery        text
);

INSERT INTO account_states_table
SELECT user_id, state, state_since, code_expires_at, username, domain, email, created_at, delivery
FROM account_states;

DROP VIEW account_states;
ALTER TABLE account_states_table RENAME TO account_states;
ALTER INDEX account_states_table_pkey RENAME TO account_states_pkey;

-- The scheduler's question: which live codes are past their expiry?
CREATE INDEX account_states_due_codes ON account_states (code_expires_at) WHERE state = 'CodeIssued';
-- The admin list pages by user id within a state or a delivery state.
CREATE INDEX account_states_by_state ON account_states (state, user_id);
CREATE INDEX account_states_by_delivery ON account_states (delivery, user_id);

-- The view's indexes served only it.
DROP INDEX IF EXISTS events_state_changes;
DROP INDEX IF EXISTS events_delivery_changes;

CREATE FUNCTION project_account_state() RETURNS trigger
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
                delivery        = CASE WHEN NEW.event_type = 'CodeIssued' THEN 'queued' ELSE delivery END
            WHERE user_id = account;
        END CASE;
    RETURN NULL;
END
$$;

-- AFTER the BEFORE INSERT trigger of 0008 has drawn the event's position and time.
CREATE TRIGGER project_account_state
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND NEW.event_type IN
                                                ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked',
                                                 'InvitationRevoked', 'PasswordSet', 'UserActivated',
                                                 'InvitationMailSent', 'InvitationMailFailed',
                                                 'InvitationMailAbandoned'))
EXECUTE FUNCTION project_account_state();
