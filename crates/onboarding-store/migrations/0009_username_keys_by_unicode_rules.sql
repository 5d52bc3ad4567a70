-- Username keys follow Unicode's default lower-case mapping, whatever the database's collation.
--
-- 0001 keyed the registry with `lower()` under the database's default collation, while the
-- engine looks names up with Unicode's full lower-case mapping (Rust `str::to_lowercase`).
-- They differ outside ASCII: under C.UTF-8 a final Σ lowers to σ instead of ς and İ to i instead
-- of i̇; under the C collation no non-ASCII letter is lowered at all. Two names that differ only
-- in case could then both be registered, and a lookup by name could miss the account.
-- ICU's root locale ("und-x-icu", present in every ICU-enabled PostgreSQL, as Debian's is)
-- implements the same Unicode mapping, final sigma included.

CREATE OR REPLACE FUNCTION reserve_username() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO usernames (domain, username_key, user_id)
    VALUES (NEW.payload -> 'UserInvited' ->> 'domain',
            lower((NEW.payload -> 'UserInvited' ->> 'username') COLLATE "und-x-icu"),
            (NEW.payload -> 'UserInvited' ->> 'user_id')::uuid);
    RETURN NULL;
END;
$$;

-- Re-key the names registered so far, oldest first. If the old rule let two names that differ
-- only in case both register, the older keeps the key; the newer keeps its old key (its account is
-- not touched) and a warning names both, for an operator to decide which account to revoke.
DO
$$
    DECLARE
        r     record;
        owner uuid;
    BEGIN
        FOR r IN SELECT u.domain, u.username_key, u.user_id,
                        lower((e.payload -> 'UserInvited' ->> 'username') COLLATE "und-x-icu") AS key
                 FROM usernames u
                          JOIN events e
                               ON e.aggregate_id = u.user_id::text AND e.event_type = 'UserInvited'
                 ORDER BY u.reserved_at, u.user_id
            LOOP
                CONTINUE WHEN r.key = r.username_key;
                SELECT user_id INTO owner FROM usernames WHERE domain = r.domain AND username_key = r.key;
                IF FOUND THEN
                    RAISE WARNING 'accounts % and % have names that differ only in case (key % in domain %); % keeps its old key',
                        owner, r.user_id, r.key, r.domain, r.user_id;
                ELSE
                    UPDATE usernames SET username_key = r.key
                    WHERE domain = r.domain AND username_key = r.username_key;
                END IF;
            END LOOP;
    END
$$;
