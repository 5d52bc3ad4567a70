//! The onboarding domain: the `Onboarding` aggregate, its commands, events and value types.
//!
//! Architecture invariant: this crate does no I/O. It depends on no database, broker, mail or
//! HTTP crate; clock values arrive in command fields, randomness arrives as already drawn ids,
//! and password hashing arrives through the [`PasswordHasher`] service.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aggregate;
pub mod code;
pub mod display;
mod event;
pub mod password;
pub mod value;

pub use aggregate::{
    at_log_precision, EmailDelivery, HashingFailed, InviteUser, IssuedCode, NewCode, Onboarding,
    OnboardingCommand, OnboardingError, OnboardingServices, OnboardingState, PasswordHasher,
    Provisioning, ResendLimits, RevokedBy,
};
pub use event::{CodeIssueReason, OnboardingEvent, TemplateRef};
