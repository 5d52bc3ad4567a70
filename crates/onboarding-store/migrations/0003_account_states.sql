-- Each account's current state and what admins list invitations by, derived from the log itself
-- (always consistent with it: no projection to lag behind or lose an update).
CREATE INDEX events_state_changes ON events (aggregate_id, sequence DESC)
    WHERE event_type IN ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked', 'InvitationRevoked',
                         'PasswordSet', 'UserActivated');

CREATE VIEW account_states AS
SELECT last.aggregate_id::uuid                                   AS user_id,
       CASE last.event_type
           WHEN 'UserInvited' THEN 'Invited'
           WHEN 'CodeIssued' THEN 'CodeIssued'
           WHEN 'CodeExpired' THEN 'Expired'
           WHEN 'CodeLocked' THEN 'Locked'
           WHEN 'InvitationRevoked' THEN 'Revoked'
           WHEN 'PasswordSet' THEN 'PasswordSet'
           WHEN 'UserActivated' THEN 'Active'
       END                                                       AS state,
       last.recorded_at                                          AS state_since,
       (last.payload -> 'CodeIssued' ->> 'expires_at')::timestamptz AS code_expires_at,
       inv.payload -> 'UserInvited' ->> 'username'               AS username,
       inv.payload -> 'UserInvited' ->> 'domain'                 AS domain,
       inv.payload -> 'UserInvited' ->> 'email'                  AS email,
       inv.recorded_at                                           AS created_at
FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, payload, recorded_at
      FROM events
      WHERE aggregate_type = 'Onboarding'
        AND event_type IN ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked', 'InvitationRevoked',
                           'PasswordSet', 'UserActivated')
      ORDER BY aggregate_id, sequence DESC) AS last
         JOIN events inv
              ON inv.aggregate_type = 'Onboarding' AND inv.aggregate_id = last.aggregate_id AND inv.sequence = 1;
