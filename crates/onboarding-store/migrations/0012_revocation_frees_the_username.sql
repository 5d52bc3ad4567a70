-- A revoked invitation gives its username back: an administrator who invited `jane` at a wrong
-- address revokes the invitation and invites `jane` again. A revoked account can never become
-- active (Revoked is final), so two live holders of one name cannot arise. The revoked account
-- keeps its events and its row in account_states, where `onboard user show` and `onboard audit`
-- still find it by name when no live account holds the name (ADR 0002, second amendment).

CREATE FUNCTION release_username() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM usernames WHERE user_id = NEW.aggregate_id::uuid;
    RETURN NULL;
END
$$;

CREATE TRIGGER release_username
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND NEW.event_type = 'InvitationRevoked')
EXECUTE FUNCTION release_username();

-- Names held by invitations revoked before this migration are free from now on.
DELETE FROM usernames u USING account_states a
WHERE a.user_id = u.user_id AND a.state = 'Revoked';

-- Finding a revoked account by its name (user show, audit history) reads account_states.
CREATE INDEX account_states_by_name ON account_states (domain, lower(username COLLATE "und-x-icu"));
