-- Personal data leaves the immutable log by crypto-shredding (docs/adr/0030).
--
-- From now on the store seals the personal fields of each event (`OnboardingEvent::personal_fields`:
-- the invitation's username, email and claims, the reasons and SMTP answers that may quote them)
-- with a data key of the user's own before the row is written: the payload holds `sealed`, the
-- ciphertext, instead of the fields. The key lives here, wrapped by the configured key-encryption
-- key (`personal_data.key_encryption_key_file`) when there is one. Erasing the user deletes her key:
-- the sealed fields stay in the log, its hash chain intact, and nobody can read them again.
--
-- Rows written before this migration keep their fields in clear: the log is append-only and its
-- chain covers them (the ADR says what erasure means for them).

CREATE TABLE personal_data_keys
(
    user_id    uuid PRIMARY KEY,
    -- `wrapped_by` 'none': the 32-byte AES-256 key itself. Otherwise `kek:<fingerprint>`: a 12-byte
    -- nonce and the key sealed with AES-256-GCM under that key-encryption key.
    data_key   bytea       NOT NULL,
    wrapped_by text        NOT NULL CHECK (wrapped_by = 'none' OR wrapped_by LIKE 'kek:%'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A sealed invitation holds no username to reserve: the store reserves it in the append's
-- transaction from the clear value it sealed. Rows in clear (an older binary during a rolling
-- upgrade) are still reserved here.
DROP TRIGGER reserve_username ON events;
CREATE TRIGGER reserve_username
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.event_type = 'UserInvited' AND NOT (NEW.payload -> 'UserInvited') ? 'sealed')
EXECUTE FUNCTION reserve_username();

-- `UserErased`, in the append's transaction: the key that opens her sealed fields, her credential,
-- her name in the registry, the projection's personal columns and every copy of her data outside
-- the log (bulk rows, mail retries, stored idempotent answers) go. The account's row stays, with
-- its state `Erased`, so that the audit replay still matches.
CREATE FUNCTION erase_personal_data() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    account uuid := NEW.aggregate_id::uuid;
BEGIN
    DELETE FROM personal_data_keys WHERE user_id = account;
    DELETE FROM credentials WHERE user_id = account;
    DELETE FROM usernames WHERE user_id = account;
    UPDATE account_states
    SET state           = 'Erased',
        state_since     = NEW.recorded_at,
        username        = NULL,
        email           = NULL,
        external_id     = NULL,
        code_expires_at = NULL,
        delivery        = NULL,
        provisioning    = NULL
    WHERE user_id = account;
    UPDATE bulk_job_rows SET input = NULL, reason = NULL WHERE user_id = account;
    DELETE FROM mail_retries WHERE user_id = account;
    DELETE FROM idempotency_keys WHERE response ->> 'id' = account::text;
    RETURN NULL;
END
$$;

CREATE TRIGGER erase_personal_data
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND NEW.event_type = 'UserErased')
EXECUTE FUNCTION erase_personal_data();
