//! Given/when/then tests of every transition and every refusal of the `Onboarding` aggregate.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use onboarding_domain::code::{CodeBinding, CodeId, CodeKeyring, PresentedCode};
use onboarding_domain::password::{
    CommonPasswords, HashAlgorithm, HashScheme, Password, PasswordHash, PasswordPolicy,
    PasswordRuleViolation,
};
use onboarding_domain::value::{EmailAddress, RevokeReason, UserDomain, Username};
use onboarding_domain::{
    CodeIssueReason, HashingFailed, InviteUser, NewCode, Onboarding, OnboardingCommand,
    OnboardingError, OnboardingEvent, OnboardingServices, PasswordHasher, ResendLimits, RevokedBy,
};
use uuid::Uuid;

struct FakeHasher;

#[async_trait]
impl PasswordHasher for FakeHasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashingFailed> {
        Ok(fake_hash(password.expose().len()))
    }
}

/// What `FakeHasher` makes of a password of `len` bytes: a PHC string in argon2id's format at
/// OWASP's cost, whose "hash" names the length.
fn fake_hash(len: usize) -> PasswordHash {
    let tail = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("fake hash of {len} bytes"));
    PasswordHash::parse(format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${tail}")).unwrap()
}

/// OWASP's argon2id cost, as `fake_hash` records it.
const OWASP: HashScheme = HashScheme {
    algorithm: HashAlgorithm::Argon2id,
    version: 19,
    memory_kib: 19456,
    iterations: 2,
    parallelism: 1,
};

/// `PasswordSet` as `SubmitPassword` emits it: the scheme, and the hash on its way to the
/// store's credential table.
fn password_set(n: u8, now: DateTime<Utc>) -> OnboardingEvent {
    OnboardingEvent::PasswordSet {
        code_id: code_id(n),
        scheme: OWASP,
        set_at: now,
        password_hash: Some(fake_hash(28)),
    }
}

/// `PasswordSet` as the log returns it: the store took the hash out.
fn password_set_as_stored(n: u8, now: DateTime<Utc>) -> OnboardingEvent {
    OnboardingEvent::PasswordSet {
        code_id: code_id(n),
        scheme: OWASP,
        set_at: now,
        password_hash: None,
    }
}

const USER: Uuid = Uuid::from_u128(0x1234);
const LIMITS: ResendLimits = ResendLimits {
    cooldown: Duration::minutes(1),
    daily_cap: 3,
};

fn keyring() -> Arc<CodeKeyring> {
    Arc::new(CodeKeyring::new("k1", [("k1".to_owned(), vec![7u8; 32])]).unwrap())
}

fn services() -> OnboardingServices {
    OnboardingServices {
        hasher: Arc::new(FakeHasher),
        keyring: keyring(),
        // A small list of the policy's own, as a deployment's file would give it.
        policy: PasswordPolicy {
            common_passwords: CommonPasswords::from_lines("password123\nletmein99\n"),
            ..PasswordPolicy::default()
        },
    }
}

fn framework() -> TestFramework<Onboarding> {
    TestFramework::with(services())
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn code_id(n: u8) -> CodeId {
    CodeId::from_random_bytes([n; 16])
}

fn new_code(n: u8) -> NewCode {
    NewCode {
        code_id: code_id(n),
        key_id: "k1".into(),
        validity: Duration::minutes(60),
    }
}

fn invited() -> OnboardingEvent {
    OnboardingEvent::UserInvited {
        user_id: USER,
        username: Username::parse("Jane").unwrap(),
        email: EmailAddress::parse("jane@pickup.example").unwrap(),
        domain: UserDomain::primary(),
        locale: None,
        time_zone: None,
        claims: BTreeMap::new(),
        invited_at: t0(),
    }
}

fn issued(n: u8, at: DateTime<Utc>, reason: CodeIssueReason) -> OnboardingEvent {
    OnboardingEvent::CodeIssued {
        code_id: code_id(n),
        key_id: "k1".into(),
        issued_at: at,
        expires_at: at + Duration::minutes(60),
        reason,
    }
}

fn token(n: u8, issued_at: DateTime<Utc>) -> PresentedCode {
    let binding = CodeBinding {
        user_id: USER,
        code_id: code_id(n),
        expires_at: issued_at + Duration::minutes(60),
    };
    let minted = keyring().mint("k1", &binding).unwrap();
    PresentedCode::parse(minted.expose()).unwrap()
}

fn submit(n: u8, password: &str, now: DateTime<Utc>) -> OnboardingCommand {
    OnboardingCommand::SubmitPassword {
        code: token(n, t0()),
        password: Password::new(password),
        now,
    }
}

fn invite() -> OnboardingCommand {
    OnboardingCommand::InviteUser(Box::new(InviteUser {
        user_id: USER,
        username: Username::parse("Jane").unwrap(),
        email: EmailAddress::parse("jane@pickup.example").unwrap(),
        domain: UserDomain::primary(),
        locale: None,
        time_zone: None,
        claims: BTreeMap::new(),
        code: new_code(1),
        now: t0(),
    }))
}

/// What `SubmitPassword` with the first code emits.
fn activated_events(now: DateTime<Utc>) -> Vec<OnboardingEvent> {
    vec![
        password_set(1, now),
        OnboardingEvent::UserActivated { activated_at: now },
    ]
}

/// The same events as the log returns them, for a given history.
fn activated_as_stored(now: DateTime<Utc>) -> Vec<OnboardingEvent> {
    vec![
        password_set_as_stored(1, now),
        OnboardingEvent::UserActivated { activated_at: now },
    ]
}

#[tokio::test]
async fn instants_reach_the_events_in_whole_microseconds_as_the_log_keeps_them() {
    // A clock that reads nanoseconds: the events hold the instant the log will store.
    let OnboardingCommand::InviteUser(mut command) = invite() else {
        unreachable!("invite() is an InviteUser")
    };
    command.now = t0() + Duration::nanoseconds(251_263_500);
    let kept = t0() + Duration::microseconds(251_263);
    let OnboardingEvent::UserInvited {
        user_id,
        username,
        email,
        domain,
        locale,
        time_zone,
        claims,
        ..
    } = invited()
    else {
        unreachable!("invited() is a UserInvited")
    };
    framework()
        .given_no_previous_events()
        .when_async(OnboardingCommand::InviteUser(command))
        .await
        .then_expect_events(vec![
            OnboardingEvent::UserInvited {
                user_id,
                username,
                email,
                domain,
                locale,
                time_zone,
                claims,
                invited_at: kept,
            },
            issued(1, kept, CodeIssueReason::Invitation),
        ]);
}

#[tokio::test]
async fn inviting_a_new_user_records_the_invitation_and_issues_a_code() {
    framework()
        .given_no_previous_events()
        .when_async(invite())
        .await
        .then_expect_events(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ]);
}

#[tokio::test]
async fn inviting_twice_is_refused() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(invite())
        .await
        .then_expect_error(OnboardingError::AlreadyInvited);
}

/// A hasher at a raised cost, as a deployment that raised `[password_hashing]` has.
struct RaisedCostHasher;

#[async_trait]
impl PasswordHasher for RaisedCostHasher {
    async fn hash(&self, _password: Password) -> Result<PasswordHash, HashingFailed> {
        Ok(PasswordHash::parse(
            "$argon2id$v=19$m=65536,t=3,p=2$c2FsdHNhbHQ$cmFpc2VkIGNvc3QgaGFzaA".into(),
        )
        .unwrap())
    }
}

#[tokio::test]
async fn password_set_records_how_the_password_was_hashed_and_hands_the_hash_to_the_store() {
    let now = t0() + Duration::minutes(5);
    let raised = HashScheme {
        memory_kib: 65536,
        iterations: 3,
        parallelism: 2,
        ..OWASP
    };
    let hash = RaisedCostHasher.hash(Password::new("x")).await.unwrap();
    TestFramework::<Onboarding>::with(OnboardingServices {
        hasher: Arc::new(RaisedCostHasher),
        ..services()
    })
    .given(vec![
        invited(),
        issued(1, t0(), CodeIssueReason::Invitation),
    ])
    .when_async(submit(1, "correct horse battery staple", now))
    .await
    .then_expect_events(vec![
        OnboardingEvent::PasswordSet {
            code_id: code_id(1),
            scheme: raised,
            set_at: now,
            password_hash: Some(hash),
        },
        OnboardingEvent::UserActivated { activated_at: now },
    ]);
}

#[test]
fn password_set_as_stored_names_the_scheme_and_holds_no_hash() {
    let stored = serde_json::to_value(password_set_as_stored(1, t0())).unwrap();
    let fields = &stored["PasswordSet"];
    assert_eq!(fields.get("password_hash"), None, "{stored}");
    assert_eq!(
        fields["scheme"],
        serde_json::json!({"algorithm": "argon2id", "version": 19, "memory_kib": 19456,
                           "iterations": 2, "parallelism": 1})
    );
    // Read back from the log, the event carries no hash.
    assert_eq!(
        serde_json::from_value::<OnboardingEvent>(stored).unwrap(),
        password_set_as_stored(1, t0())
    );
    assert_eq!(OnboardingEvent::version_of("PasswordSet"), "2.0");
}

#[tokio::test]
async fn an_account_whose_log_holds_no_hash_is_active_and_refuses_a_second_password() {
    let mut given = vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)];
    given.extend(activated_as_stored(t0()));
    framework()
        .given(given)
        .when_async(submit(1, "another horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
}

#[tokio::test]
async fn a_code_without_positive_validity_is_refused() {
    let OnboardingCommand::InviteUser(mut cmd) = invite() else {
        unreachable!()
    };
    cmd.code.validity = Duration::zero();
    framework()
        .given_no_previous_events()
        .when_async(OnboardingCommand::InviteUser(cmd))
        .await
        .then_expect_error(OnboardingError::InvalidValidity);
}

#[tokio::test]
async fn a_good_password_with_the_live_code_sets_it_and_activates_the_account() {
    let now = t0() + Duration::minutes(5);
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(submit(1, "correct horse battery staple", now))
        .await
        .then_expect_events(activated_events(now));
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let later = t0() + Duration::minutes(61);
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(submit(1, "correct horse battery staple", later))
        .await
        .then_expect_error(OnboardingError::CodeExpired {
            expired_at: t0() + Duration::minutes(60),
        });
}

#[tokio::test]
async fn a_used_code_is_refused_because_the_account_is_active() {
    let now = t0() + Duration::minutes(5);
    let mut given = vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)];
    given.extend(activated_as_stored(now));
    framework()
        .given(given)
        .when_async(submit(1, "another good passphrase", now))
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
}

#[tokio::test]
async fn a_code_with_a_forged_tag_is_refused() {
    let other = CodeKeyring::new("k1", [("k1".to_owned(), vec![8u8; 32])]).unwrap();
    let binding = CodeBinding {
        user_id: USER,
        code_id: code_id(1),
        expires_at: t0() + Duration::minutes(60),
    };
    let forged = PresentedCode::parse(other.mint("k1", &binding).unwrap().expose()).unwrap();
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(OnboardingCommand::SubmitPassword {
            code: forged,
            password: Password::new("correct horse battery staple"),
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::InvalidCode);
}

#[tokio::test]
async fn a_code_never_issued_is_refused() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(submit(9, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::InvalidCode);
}

#[tokio::test]
async fn resending_issues_a_new_code() {
    let later = t0() + Duration::minutes(10);
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: later,
        })
        .await
        .then_expect_events(vec![issued(2, later, CodeIssueReason::Resend)]);
}

#[tokio::test]
async fn a_resent_code_kills_the_previous_one() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
            issued(2, t0(), CodeIssueReason::Resend),
        ])
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::CodeSuperseded);
}

#[tokio::test]
async fn the_resent_code_works() {
    let now = t0() + Duration::minutes(1);
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
            issued(2, t0(), CodeIssueReason::Resend),
        ])
        .when_async(submit(2, "correct horse battery staple", now))
        .await
        .then_expect_events(vec![
            password_set(2, now),
            OnboardingEvent::UserActivated { activated_at: now },
        ]);
}

#[tokio::test]
async fn resending_after_activation_is_refused() {
    let mut given = vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)];
    given.extend(activated_as_stored(t0()));
    framework()
        .given(given)
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
}

#[tokio::test]
async fn commands_on_an_uninvited_account_are_refused() {
    framework()
        .given_no_previous_events()
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::NotInvited);
    framework()
        .given_no_previous_events()
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::NotInvited);
}

#[tokio::test]
async fn a_weak_password_is_refused_with_the_rule_it_broke_and_keeps_the_code_alive() {
    let given = vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)];
    framework()
        .given(given.clone())
        .when_async(submit(1, "short", t0()))
        .await
        .then_expect_error(OnboardingError::WeakPassword(
            PasswordRuleViolation::TooShort { min: 8 },
        ));
    framework()
        .given(given.clone())
        .when_async(submit(1, "i-am-jane-really", t0()))
        .await
        .then_expect_error(OnboardingError::WeakPassword(
            PasswordRuleViolation::ContainsUsername,
        ));
    framework()
        .given(given.clone())
        .when_async(submit(1, "password123", t0()))
        .await
        .then_expect_error(OnboardingError::WeakPassword(PasswordRuleViolation::Common));
    // The same code still works afterwards: a refused password never burns it.
    framework()
        .given(given)
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_events(activated_events(t0()));
}

#[tokio::test]
async fn a_sent_mail_is_recorded_once_per_code() {
    let given = vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)];
    let sent = OnboardingEvent::InvitationMailSent {
        code_id: code_id(1),
        message_id: "<m1@pickup.example>".into(),
        smtp_response: "250 OK".into(),
        template: None,
        sent_at: t0(),
    };
    let record = || OnboardingCommand::RecordMailSent {
        code_id: code_id(1),
        message_id: "<m1@pickup.example>".into(),
        smtp_response: "250 OK".into(),
        template: None,
        now: t0(),
    };
    framework()
        .given(given.clone())
        .when_async(record())
        .await
        .then_expect_events(vec![sent.clone()]);
    let mut twice = given;
    twice.push(sent);
    framework()
        .given(twice)
        .when_async(record())
        .await
        .then_expect_error(OnboardingError::MailAlreadySent(code_id(1)));
}

#[tokio::test]
async fn mail_outcomes_for_unknown_codes_are_refused() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(OnboardingCommand::RecordMailFailed {
            code_id: code_id(5),
            reason: "550 no such user".into(),
            permanent: true,
            attempt: 1,
            next_attempt_at: None,
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::UnknownCode(code_id(5)));
}

#[tokio::test]
async fn a_failed_mail_is_recorded() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(OnboardingCommand::RecordMailFailed {
            code_id: code_id(1),
            reason: "550 no such user".into(),
            permanent: true,
            attempt: 1,
            next_attempt_at: None,
            now: t0(),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::InvitationMailFailed {
            code_id: code_id(1),
            reason: "550 no such user".into(),
            permanent: true,
            failed_at: t0(),
            attempt: 1,
            next_attempt_at: None,
        }]);
}

#[tokio::test]
async fn giving_up_on_a_mail_is_recorded_once_it_was_not_sent() {
    framework()
        .given(vec![
            invited(),
            issued(1, t0(), CodeIssueReason::Invitation),
        ])
        .when_async(OnboardingCommand::RecordMailAbandoned {
            code_id: code_id(1),
            reason: "5 attempts failed: 451 try later".into(),
            attempts: 5,
            now: t0(),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::InvitationMailAbandoned {
            code_id: code_id(1),
            reason: "5 attempts failed: 451 try later".into(),
            attempts: 5,
            abandoned_at: t0(),
        }]);
}

#[test]
fn a_failure_recorded_before_attempts_were_counted_still_reads() {
    let old = serde_json::json!({"InvitationMailFailed": {
        "code_id": code_id(1), "reason": "451", "permanent": false, "failed_at": t0()
    }});
    let event: OnboardingEvent = serde_json::from_value(old).unwrap();
    assert!(matches!(
        event,
        OnboardingEvent::InvitationMailFailed {
            attempt: 0,
            next_attempt_at: None,
            ..
        }
    ));
}

#[test]
fn no_event_serialises_a_secret() {
    let json = serde_json::to_string(&issued(1, t0(), CodeIssueReason::Invitation)).unwrap();
    let token = keyring()
        .mint(
            "k1",
            &CodeBinding {
                user_id: USER,
                code_id: code_id(1),
                expires_at: t0() + Duration::minutes(60),
            },
        )
        .unwrap();
    assert!(!json.contains(token.expose()));
    assert!(
        !json.contains(&token.expose()[43..]),
        "the tag part must not be in the event"
    );
}

fn live() -> Vec<OnboardingEvent> {
    vec![invited(), issued(1, t0(), CodeIssueReason::Invitation)]
}

#[tokio::test]
async fn opening_the_link_is_recorded_without_changing_the_state() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::RecordLinkOpened {
            presented: token(1, t0()),
            client: "browser".into(),
            now: t0(),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::LinkOpened {
            code_id: code_id(1),
            client: "browser".into(),
            opened_at: t0(),
        }]);
}

#[tokio::test]
async fn opening_with_a_forged_code_records_nothing() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::RecordLinkOpened {
            presented: token(9, t0()),
            client: "browser".into(),
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::InvalidCode);
}

/// The live code's id with a tag minted for another expiry: what a reader of the topic, who knows
/// the ids but not the key, can forge.
fn wrong_tag(n: u8) -> PresentedCode {
    token(n, t0() + Duration::minutes(1))
}

fn failed(n: u32) -> OnboardingEvent {
    OnboardingEvent::CodeCheckFailed {
        code_id: code_id(1),
        failures: n,
        failed_at: t0(),
    }
}

#[tokio::test]
async fn a_wrong_tag_for_the_live_code_is_refused_and_records_nothing() {
    // Counting it would let anyone who reads the topic disable the code (docs/adr/0021); even
    // after as many wrong tags as once locked a code, the genuine link still sets the password.
    let mut given = live();
    given.extend((1..=4).map(failed));
    framework()
        .given(given.clone())
        .when_async(OnboardingCommand::SubmitPassword {
            code: wrong_tag(1),
            password: Password::new("correct horse battery staple"),
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::InvalidCode);
    framework()
        .given(given)
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_events(activated_events(t0()));
}

#[tokio::test]
async fn a_code_locked_before_adr_0017_stays_locked_until_a_new_code_is_issued() {
    let mut locked = live();
    locked.extend((1..=5).map(failed));
    locked.push(OnboardingEvent::CodeLocked {
        code_id: code_id(1),
        locked_at: t0(),
    });
    framework()
        .given(locked.clone())
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::CodeLocked);
    let later = t0() + Duration::hours(2);
    framework()
        .given(locked)
        .when_async(OnboardingCommand::RequestNewLink {
            presented: token(1, t0()),
            code: new_code(2),
            limits: LIMITS,
            now: later,
        })
        .await
        .then_expect_events(vec![issued(2, later, CodeIssueReason::UserRequest)]);
}

#[tokio::test]
async fn the_scheduler_expires_only_a_live_code_past_its_expiry() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::ExpireCode {
            now: t0() + Duration::minutes(59),
        })
        .await
        .then_expect_error(OnboardingError::CodeNotExpired);
    framework()
        .given(live())
        .when_async(OnboardingCommand::ExpireCode {
            now: t0() + Duration::minutes(60),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::CodeExpired {
            code_id: code_id(1),
            expired_at: t0() + Duration::minutes(60),
        }]);
}

#[test]
fn the_view_says_expired_from_the_codes_expiry_not_from_the_schedulers_pass() {
    use cqrs_es::Aggregate;
    use onboarding_domain::OnboardingState;
    let fold = |events: Vec<OnboardingEvent>| {
        let mut account = Onboarding::default();
        events.into_iter().for_each(|e| account.apply(e));
        account
    };
    let expiry = t0() + Duration::minutes(60);
    let account = fold(live());
    assert_eq!(account.state, OnboardingState::CodeIssued);
    let just_before = expiry - Duration::microseconds(1);
    assert_eq!(account.state_at(just_before), OnboardingState::CodeIssued);
    assert_eq!(
        account.live_code_at(just_before).map(|c| c.expires_at),
        Some(expiry)
    );
    // The instant check_code refuses the code, the view says Expired and shows no live code,
    // as it does once the scheduler recorded CodeExpired.
    assert_eq!(account.state_at(expiry), OnboardingState::Expired);
    assert!(account.live_code_at(expiry).is_none());
    let mut recorded = live();
    recorded.push(OnboardingEvent::CodeExpired {
        code_id: code_id(1),
        expired_at: expiry + Duration::seconds(30),
    });
    let recorded = fold(recorded);
    assert_eq!(recorded.state_at(expiry), OnboardingState::Expired);
    assert!(recorded.live_code_at(expiry).is_none());
    // A new code revives the account at once.
    let mut reissued = live();
    reissued.push(issued(2, expiry, CodeIssueReason::Resend));
    let reissued = fold(reissued);
    assert_eq!(reissued.state_at(expiry), OnboardingState::CodeIssued);
}

#[tokio::test]
async fn an_expired_invitation_gets_a_new_link_on_request_from_its_old_code() {
    let mut given = live();
    given.push(OnboardingEvent::CodeExpired {
        code_id: code_id(1),
        expired_at: t0() + Duration::minutes(60),
    });
    let later = t0() + Duration::hours(2);
    framework()
        .given(given)
        .when_async(OnboardingCommand::RequestNewLink {
            presented: token(1, t0()),
            code: new_code(2),
            limits: LIMITS,
            now: later,
        })
        .await
        .then_expect_events(vec![issued(2, later, CodeIssueReason::UserRequest)]);
}

#[tokio::test]
async fn a_new_link_request_needs_a_genuine_code() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::RequestNewLink {
            presented: token(7, t0()),
            code: new_code(2),
            limits: LIMITS,
            now: t0() + Duration::hours(2),
        })
        .await
        .then_expect_error(OnboardingError::InvalidCode);
}

#[tokio::test]
async fn resends_respect_the_cooldown_and_the_daily_cap() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: t0() + Duration::seconds(20),
        })
        .await
        .then_expect_error(OnboardingError::ResendLimited {
            retry_after_seconds: 40,
        });
    let mut given = live();
    given.extend([
        issued(2, t0() + Duration::minutes(1), CodeIssueReason::Resend),
        issued(3, t0() + Duration::minutes(2), CodeIssueReason::Resend),
        issued(4, t0() + Duration::minutes(3), CodeIssueReason::UserRequest),
    ]);
    framework()
        .given(given)
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(5),
            limits: LIMITS,
            now: t0() + Duration::minutes(10),
        })
        .await
        .then_expect_error(OnboardingError::ResendLimited {
            retry_after_seconds: (Duration::hours(24) - Duration::minutes(9)).num_seconds(),
        });
}

#[tokio::test]
async fn an_invitation_can_be_revoked_by_an_admin_until_it_is_active() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::RevokeInvitation {
            by: RevokedBy::Admin,
            reason: Some(RevokeReason::parse("left before day one").unwrap()),
            now: t0(),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::InvitationRevoked {
            by: RevokedBy::Admin,
            reason: Some("left before day one".into()),
            revoked_at: t0(),
        }]);
    let mut active = live();
    active.extend(activated_as_stored(t0()));
    framework()
        .given(active)
        .when_async(OnboardingCommand::RevokeInvitation {
            by: RevokedBy::Admin,
            reason: None,
            now: t0(),
        })
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
}

#[tokio::test]
async fn the_user_revokes_with_the_code_and_nothing_works_afterwards() {
    framework()
        .given(live())
        .when_async(OnboardingCommand::RevokeWithCode {
            presented: token(1, t0()),
            now: t0(),
        })
        .await
        .then_expect_events(vec![OnboardingEvent::InvitationRevoked {
            by: RevokedBy::User,
            reason: None,
            revoked_at: t0(),
        }]);
    let mut revoked = live();
    revoked.push(OnboardingEvent::InvitationRevoked {
        by: RevokedBy::User,
        reason: None,
        revoked_at: t0(),
    });
    framework()
        .given(revoked.clone())
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::InvitationRevoked);
    framework()
        .given(revoked)
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: t0() + Duration::hours(1),
        })
        .await
        .then_expect_error(OnboardingError::InvitationRevoked);
}

#[tokio::test]
async fn a_daily_cap_of_zero_refuses_every_resend_without_panicking() {
    let limits = ResendLimits {
        cooldown: Duration::zero(),
        daily_cap: 0,
    };
    framework()
        .given(live())
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits,
            now: t0() + Duration::hours(1),
        })
        .await
        .then_expect_error(OnboardingError::ResendLimited {
            retry_after_seconds: Duration::hours(24).num_seconds(),
        });
}

fn welcome_template() -> onboarding_domain::TemplateRef {
    onboarding_domain::TemplateRef {
        id: "welcome".into(),
        version: "abc123".into(),
        locale: "en".into(),
    }
}

#[tokio::test]
async fn the_welcome_mail_is_recorded_once_and_only_for_an_active_account() {
    let record = || OnboardingCommand::RecordWelcomeMailSent {
        message_id: "<w1@pickup.example>".into(),
        template: welcome_template(),
        now: t0(),
    };
    framework()
        .given(live())
        .when_async(record())
        .await
        .then_expect_error(OnboardingError::NotActive);
    let mut active = live();
    active.extend(activated_as_stored(t0()));
    let sent = OnboardingEvent::WelcomeMailSent {
        message_id: "<w1@pickup.example>".into(),
        template: welcome_template(),
        sent_at: t0(),
    };
    framework()
        .given(active.clone())
        .when_async(record())
        .await
        .then_expect_events(vec![sent.clone()]);
    active.push(sent);
    framework()
        .given(active)
        .when_async(record())
        .await
        .then_expect_error(OnboardingError::WelcomeAlreadySent);
}

fn provisioned(attempts: u32) -> OnboardingEvent {
    OnboardingEvent::UserProvisioned {
        user_store: "read_write_ldap_unique_id".into(),
        attempts,
        provisioned_at: t0(),
    }
}

fn record_provisioned(attempts: u32) -> OnboardingCommand {
    OnboardingCommand::RecordProvisioned {
        user_store: "read_write_ldap_unique_id".into(),
        attempts,
        now: t0(),
    }
}

fn record_provisioning_failed(attempt: u32, permanent: bool) -> OnboardingCommand {
    OnboardingCommand::RecordProvisioningFailed {
        user_store: "read_write_ldap_unique_id".into(),
        reason: "the directory is unavailable: connection refused".into(),
        permanent,
        attempt,
        now: t0(),
    }
}

fn active() -> Vec<OnboardingEvent> {
    let mut events = live();
    events.extend(activated_events(t0()));
    events
}

#[tokio::test]
async fn an_active_account_is_provisioned_once() {
    framework()
        .given(active())
        .when_async(record_provisioned(1))
        .await
        .then_expect_events(vec![provisioned(1)]);
    let mut done = active();
    done.push(provisioned(1));
    // A provisioner that wrote the entry again (a redelivered record, a crash before the
    // event) has nothing more to record.
    framework()
        .given(done.clone())
        .when_async(record_provisioned(1))
        .await
        .then_expect_error(OnboardingError::AlreadyProvisioned);
    framework()
        .given(done)
        .when_async(record_provisioning_failed(2, false))
        .await
        .then_expect_error(OnboardingError::AlreadyProvisioned);
}

#[tokio::test]
async fn a_failed_attempt_is_recorded_and_a_later_success_still_counts() {
    framework()
        .given(active())
        .when_async(record_provisioning_failed(1, false))
        .await
        .then_expect_events(vec![OnboardingEvent::ProvisioningFailed {
            user_store: "read_write_ldap_unique_id".into(),
            reason: "the directory is unavailable: connection refused".into(),
            permanent: false,
            attempt: 1,
            failed_at: t0(),
        }]);
    let mut failed = active();
    failed.push(OnboardingEvent::ProvisioningFailed {
        user_store: "read_write_ldap_unique_id".into(),
        reason: "the directory is unavailable: connection refused".into(),
        permanent: false,
        attempt: 1,
        failed_at: t0(),
    });
    framework()
        .given(failed)
        .when_async(record_provisioned(4))
        .await
        .then_expect_events(vec![provisioned(4)]);
}

#[tokio::test]
async fn an_account_that_is_not_active_is_never_provisioned() {
    let mut revoked = live();
    revoked.push(OnboardingEvent::InvitationRevoked {
        by: RevokedBy::Admin,
        reason: None,
        revoked_at: t0(),
    });
    let mut expired = live();
    expired.push(OnboardingEvent::CodeExpired {
        code_id: code_id(1),
        expired_at: t0() + Duration::minutes(60),
    });
    for given in [live(), revoked, expired] {
        framework()
            .given(given.clone())
            .when_async(record_provisioned(1))
            .await
            .then_expect_error(OnboardingError::NotActive);
        framework()
            .given(given)
            .when_async(record_provisioning_failed(1, true))
            .await
            .then_expect_error(OnboardingError::NotActive);
    }
    framework()
        .given_no_previous_events()
        .when_async(record_provisioned(1))
        .await
        .then_expect_error(OnboardingError::NotInvited);
}

#[test]
fn activation_makes_provisioning_pending_and_the_outcomes_show_in_the_account() {
    use cqrs_es::Aggregate;
    use onboarding_domain::Provisioning;
    let mut account = Onboarding::default();
    for e in live() {
        account.apply(e);
    }
    assert_eq!(account.provisioning, None);
    for e in activated_events(t0()) {
        account.apply(e);
    }
    assert_eq!(account.provisioning, Some(Provisioning::Pending));
    account.apply(OnboardingEvent::ProvisioningFailed {
        user_store: "read_write_ldap_unique_id".into(),
        reason: "down".into(),
        permanent: false,
        attempt: 1,
        failed_at: t0(),
    });
    assert_eq!(
        account.provisioning.as_ref().map(Provisioning::as_str),
        Some("failed")
    );
    account.apply(provisioned(2));
    assert_eq!(
        account.provisioning,
        Some(Provisioning::Provisioned {
            at: t0(),
            user_store: "read_write_ldap_unique_id".into(),
            attempts: 2,
        })
    );
}

fn disabled() -> Vec<OnboardingEvent> {
    let mut events = active();
    events.push(OnboardingEvent::AccountDisabled {
        disabled_at: t0() + Duration::days(1),
    });
    events
}

fn revoked() -> Vec<OnboardingEvent> {
    let mut events = live();
    events.push(OnboardingEvent::InvitationRevoked {
        by: RevokedBy::Admin,
        reason: None,
        revoked_at: t0(),
    });
    events
}

#[tokio::test]
async fn an_active_account_is_disabled_and_enabled_again() {
    let later = t0() + Duration::days(1);
    framework()
        .given(active())
        .when_async(OnboardingCommand::DisableAccount { now: later })
        .await
        .then_expect_events(vec![OnboardingEvent::AccountDisabled {
            disabled_at: later,
        }]);
    framework()
        .given(disabled())
        .when_async(OnboardingCommand::EnableAccount { now: later })
        .await
        .then_expect_events(vec![OnboardingEvent::AccountEnabled { enabled_at: later }]);
}

#[tokio::test]
async fn only_an_active_account_is_disabled_and_only_a_disabled_one_enabled() {
    let now = t0() + Duration::days(2);
    for (given, error) in [
        (disabled(), OnboardingError::AccountDisabled),
        (live(), OnboardingError::NotActive),
        (revoked(), OnboardingError::InvitationRevoked),
        (vec![], OnboardingError::NotInvited),
    ] {
        framework()
            .given(given)
            .when_async(OnboardingCommand::DisableAccount { now })
            .await
            .then_expect_error(error);
    }
    for (given, error) in [
        (active(), OnboardingError::NotDisabled),
        (live(), OnboardingError::NotDisabled),
        (revoked(), OnboardingError::InvitationRevoked),
    ] {
        framework()
            .given(given)
            .when_async(OnboardingCommand::EnableAccount { now })
            .await
            .then_expect_error(error);
    }
}

#[tokio::test]
async fn a_disabled_account_takes_no_code_no_resend_and_no_revocation() {
    let now = t0() + Duration::days(2);
    framework()
        .given(disabled())
        .when_async(submit(1, "correct horse battery staple", t0()))
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
    framework()
        .given(disabled())
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now,
        })
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
    framework()
        .given(disabled())
        .when_async(OnboardingCommand::RevokeInvitation {
            by: RevokedBy::Admin,
            reason: None,
            now,
        })
        .await
        .then_expect_error(OnboardingError::AlreadyActive);
}

fn new_address() -> EmailAddress {
    EmailAddress::parse("jane.doe@pickup.example").unwrap()
}

#[tokio::test]
async fn a_new_address_for_an_open_invitation_reissues_the_code_to_it() {
    let now = t0() + Duration::minutes(5);
    // Within the resend cooldown: an address change is not a resend the limits hold back.
    framework()
        .given(live())
        .when_async(OnboardingCommand::ChangeEmail {
            email: new_address(),
            code: new_code(2),
            now,
        })
        .await
        .then_expect_events(vec![
            OnboardingEvent::EmailChanged {
                email: new_address(),
                changed_at: now,
            },
            issued(2, now, CodeIssueReason::Resend),
        ]);
    // An expired invitation is revived at the new address.
    let mut expired = live();
    expired.push(OnboardingEvent::CodeExpired {
        code_id: code_id(1),
        expired_at: t0() + Duration::minutes(60),
    });
    let later = t0() + Duration::hours(3);
    framework()
        .given(expired)
        .when_async(OnboardingCommand::ChangeEmail {
            email: new_address(),
            code: new_code(2),
            now: later,
        })
        .await
        .then_expect_events(vec![
            OnboardingEvent::EmailChanged {
                email: new_address(),
                changed_at: later,
            },
            issued(2, later, CodeIssueReason::Resend),
        ]);
}

#[tokio::test]
async fn the_old_link_dies_when_the_address_changes() {
    let now = t0() + Duration::minutes(5);
    let mut changed = live();
    changed.push(OnboardingEvent::EmailChanged {
        email: new_address(),
        changed_at: now,
    });
    changed.push(issued(2, now, CodeIssueReason::Resend));
    framework()
        .given(changed)
        .when_async(submit(1, "correct horse battery staple", now))
        .await
        .then_expect_error(OnboardingError::CodeSuperseded);
}

#[tokio::test]
async fn an_active_or_disabled_account_changes_its_address_without_a_code() {
    let now = t0() + Duration::days(3);
    for given in [active(), disabled()] {
        framework()
            .given(given)
            .when_async(OnboardingCommand::ChangeEmail {
                email: new_address(),
                code: new_code(2),
                now,
            })
            .await
            .then_expect_events(vec![OnboardingEvent::EmailChanged {
                email: new_address(),
                changed_at: now,
            }]);
    }
}

#[tokio::test]
async fn the_same_address_or_claims_again_change_nothing() {
    let now = t0() + Duration::minutes(5);
    framework()
        .given(live())
        .when_async(OnboardingCommand::ChangeEmail {
            email: EmailAddress::parse("jane@pickup.example").unwrap(),
            code: new_code(2),
            now,
        })
        .await
        .then_expect_events(vec![]);
    framework()
        .given(live())
        .when_async(OnboardingCommand::UpdateClaims {
            claims: BTreeMap::new(),
            now,
        })
        .await
        .then_expect_events(vec![]);
}

#[tokio::test]
async fn claims_are_replaced_as_a_whole_until_the_invitation_is_revoked() {
    let now = t0() + Duration::minutes(5);
    let claims = BTreeMap::from([
        ("external_id".to_owned(), serde_json::json!("hr-7")),
        ("family_name".to_owned(), serde_json::json!("Doe")),
    ]);
    for given in [live(), active(), disabled()] {
        framework()
            .given(given)
            .when_async(OnboardingCommand::UpdateClaims {
                claims: claims.clone(),
                now,
            })
            .await
            .then_expect_events(vec![OnboardingEvent::ClaimsUpdated {
                claims: claims.clone(),
                updated_at: now,
            }]);
    }
    framework()
        .given(revoked())
        .when_async(OnboardingCommand::UpdateClaims {
            claims: claims.clone(),
            now,
        })
        .await
        .then_expect_error(OnboardingError::InvitationRevoked);
    framework()
        .given(revoked())
        .when_async(OnboardingCommand::ChangeEmail {
            email: new_address(),
            code: new_code(2),
            now,
        })
        .await
        .then_expect_error(OnboardingError::InvitationRevoked);
}

fn erased() -> OnboardingEvent {
    OnboardingEvent::UserErased { erased_at: t0() }
}

#[tokio::test]
async fn an_account_in_any_state_can_be_erased() {
    let mut provisioned_account = active();
    provisioned_account.push(provisioned(1));
    for given in [live(), active(), revoked(), disabled(), provisioned_account] {
        framework()
            .given(given)
            .when_async(OnboardingCommand::EraseUser { now: t0() })
            .await
            .then_expect_events(vec![erased()]);
    }
}

#[tokio::test]
async fn nobody_invited_cannot_be_erased() {
    framework()
        .given_no_previous_events()
        .when_async(OnboardingCommand::EraseUser { now: t0() })
        .await
        .then_expect_error(OnboardingError::NotInvited);
}

#[tokio::test]
async fn an_erased_account_refuses_every_command_even_a_second_erasure() {
    let mut gone = active();
    gone.push(erased());
    framework()
        .given(gone.clone())
        .when_async(OnboardingCommand::EraseUser { now: t0() })
        .await
        .then_expect_error(OnboardingError::Erased);
    framework()
        .given(gone.clone())
        .when_async(record_provisioned(1))
        .await
        .then_expect_error(OnboardingError::Erased);
    let mut gone_before_activation = live();
    gone_before_activation.push(erased());
    framework()
        .given(gone_before_activation.clone())
        .when_async(OnboardingCommand::ResendCode {
            code: new_code(2),
            limits: LIMITS,
            now: t0() + Duration::hours(2),
        })
        .await
        .then_expect_error(OnboardingError::Erased);
    framework()
        .given(gone_before_activation)
        .when_async(OnboardingCommand::SubmitPassword {
            code: token(1, t0()),
            password: Password::new("correct horse battery staple"),
            now: t0() + Duration::minutes(1),
        })
        .await
        .then_expect_error(OnboardingError::Erased);
}

#[test]
fn erasure_drops_what_the_account_held_about_her() {
    use cqrs_es::Aggregate;
    use onboarding_domain::OnboardingState;
    let mut account = Onboarding::default();
    let mut events = active();
    events.push(provisioned(1));
    for e in events {
        account.apply(e);
    }
    assert!(account.email.is_some() && account.username.is_some());
    account.apply(erased());
    assert_eq!(account.state, OnboardingState::Erased);
    assert_eq!(account.erased_at, Some(t0()));
    assert_eq!(account.username, None);
    assert_eq!(account.email, None);
    assert!(account.claims.is_empty());
    assert_eq!(account.provisioning, None);
    assert_eq!(account.delivery, None);
    // The id stays: the log and the views still name the account.
    assert_eq!(account.user_id, Some(USER));
    assert_eq!(
        OnboardingState::parse("erased"),
        Some(OnboardingState::Erased)
    );
}
