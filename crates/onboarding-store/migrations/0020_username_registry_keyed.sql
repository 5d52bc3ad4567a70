-- The username registry keeps only what uniqueness needs: a keyed hash of each name (docs/adr/0035).
--
-- With `personal_data.key_encryption_key_file` configured, the store writes a held name into
-- `usernames` as `hmac-sha256:<key id>/<HMAC-SHA-256 of "DOMAIN/name-key", hex>`, under a key
-- derived from the key-encryption key by HKDF (the key id is the first 8 bytes of that key's
-- SHA-256). The name-key is `Username::key`, the lower-case form of the NFKC-normalised name,
-- as migration 0009 keys names. Without a key-encryption key, names stay in clear, as before.
-- A keyed row is told from one in clear by its `/`: `Username::parse` has always refused `/`
-- (WSO2's separator between domain and name), so no name in clear holds one.
--
-- Rows written in clear before (by the store, or by the `reserve_username` trigger for an
-- invitation in clear) stay as they are until `onboard migrate` rewrites them, batch by batch,
-- under the append lock. Until then the store looks names up in both forms, and an invitation
-- of a name that a row in clear holds is refused (`refuse_names_held_in_clear`).

-- Which key the registry's names are hashed with: recorded by the first keyed row. Every keyed
-- row must be under it, and no name may come in clear once it is recorded, so that an engine
-- with another key-encryption key, or none, or one that predates this migration, cannot
-- register a name twice unseen.
CREATE TABLE username_registry_key
(
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    keyed_by  text        NOT NULL CHECK (keyed_by ~ '^hmac-sha256:[0-9a-f]{16}$'),
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- New and rewritten rows are in one of the two forms; the rows in clear that exist hold no `/`
-- by construction, so they are not scanned (NOT VALID) while the engine runs.
ALTER TABLE usernames
    ADD CONSTRAINT usernames_key_form
        CHECK (strpos(username_key, '/') = 0
            OR username_key ~ '^hmac-sha256:[0-9a-f]{16}/[0-9a-f]{64}$') NOT VALID;

CREATE FUNCTION usernames_under_one_key() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    this_key text;
    recorded text;
BEGIN
    SELECT k.keyed_by INTO recorded FROM username_registry_key k;
    IF strpos(NEW.username_key, '/') = 0 THEN
        IF recorded IS NOT NULL THEN
            RAISE EXCEPTION 'the username registry is keyed by %, but a name came in clear: the engine that wrote it has no personal_data.key_encryption_key_file, or predates the keyed registry; give it the key-encryption key and upgrade it (docs/adr/0035)', recorded;
        END IF;
        RETURN NEW;
    END IF;
    this_key := split_part(NEW.username_key, '/', 1);
    IF recorded IS NULL THEN
        INSERT INTO username_registry_key (keyed_by) VALUES (this_key) ON CONFLICT DO NOTHING;
        SELECT k.keyed_by INTO recorded FROM username_registry_key k;
    END IF;
    IF recorded <> this_key THEN
        RAISE EXCEPTION 'the username registry is keyed by %, but a name came keyed by %: the engine that wrote it has another personal_data.key_encryption_key_file; give it the one the registry was keyed with (docs/adr/0035)', recorded, this_key;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER usernames_under_one_key
    BEFORE INSERT OR UPDATE OF username_key
    ON usernames
    FOR EACH ROW
EXECUTE FUNCTION usernames_under_one_key();

-- Called by the store in the append's transaction, after it inserted the keyed rows of the
-- names it registers, with the same names' clear keys: a row in clear that holds one of them
-- (written before the registry was keyed, not yet rewritten by `onboard migrate`) refuses the
-- append as the unique key would, so a name is never held twice across the transition. The
-- message names the holder, never the name.
CREATE FUNCTION refuse_names_held_in_clear(domains text[], clear_keys text[]) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    holder uuid;
BEGIN
    SELECT u.user_id
    INTO holder
    FROM usernames u
             JOIN unnest(domains, clear_keys) AS c(domain, username_key)
                  ON u.domain = c.domain AND u.username_key = c.username_key
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the name is held by account %, whose registry row is still in clear (onboard migrate rewrites it)', holder
            USING ERRCODE = 'unique_violation', TABLE = 'usernames';
    END IF;
END
$$;
