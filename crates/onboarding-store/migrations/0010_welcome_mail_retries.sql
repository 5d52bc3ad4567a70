-- Welcome mails wait in the delayed store too, so a failing one never holds its partition.
--
-- `kind` says which mail a row schedules. For an invitation `code_id` is the code's id; a
-- welcome mail has no code and uses the user's id there (a user has at most one welcome mail).
ALTER TABLE mail_retries
    ADD COLUMN kind text NOT NULL DEFAULT 'invitation'
        CONSTRAINT mail_retries_kind CHECK (kind IN ('invitation', 'welcome'));
