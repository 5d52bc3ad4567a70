-- Invitation mails waiting for their next attempt, and the `abandoned` delivery state.
--
-- A mail that failed transiently waits here, not on its Kafka partition: the email worker moves
-- on to the next record and tries this one again when `next_attempt_at` is due. The row is the
-- worker's schedule only; each attempt's outcome is an event on the account.
CREATE TABLE mail_retries (
    user_id          uuid        NOT NULL,
    code_id          uuid        NOT NULL,
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text        NOT NULL,
    PRIMARY KEY (code_id)
);
CREATE INDEX mail_retries_due ON mail_retries (next_attempt_at);

DROP INDEX events_delivery_changes;
CREATE INDEX events_delivery_changes ON events (aggregate_id, sequence DESC)
    WHERE event_type IN ('CodeIssued', 'InvitationMailSent', 'InvitationMailFailed', 'InvitationMailAbandoned');

CREATE OR REPLACE VIEW account_states AS
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
       inv.recorded_at                                           AS created_at,
       CASE mail.event_type
           WHEN 'CodeIssued' THEN 'queued'
           WHEN 'InvitationMailSent' THEN 'sent'
           WHEN 'InvitationMailFailed' THEN 'failed'
           WHEN 'InvitationMailAbandoned' THEN 'abandoned'
       END                                                       AS delivery
FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, payload, recorded_at
      FROM events
      WHERE aggregate_type = 'Onboarding'
        AND event_type IN ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked', 'InvitationRevoked',
                           'PasswordSet', 'UserActivated')
      ORDER BY aggregate_id, sequence DESC) AS last
         JOIN events inv
              ON inv.aggregate_type = 'Onboarding' AND inv.aggregate_id = last.aggregate_id AND inv.sequence = 1
         LEFT JOIN LATERAL (SELECT e.event_type
                            FROM events e
                            WHERE e.aggregate_type = 'Onboarding'
                              AND e.aggregate_id = last.aggregate_id
                              AND e.event_type IN ('CodeIssued', 'InvitationMailSent', 'InvitationMailFailed',
                                                   'InvitationMailAbandoned')
                            ORDER BY e.sequence DESC
                            LIMIT 1) AS mail ON true;
