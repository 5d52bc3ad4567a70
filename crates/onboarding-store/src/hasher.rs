//! argon2id password hashing, run on the blocking pool and bounded so a burst of submissions
//! cannot exhaust memory (each hash holds `m_cost` KiB).

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use onboarding_domain::password::{Password, PasswordHash};
use onboarding_domain::{HashingFailed, PasswordHasher};
use tokio::sync::Semaphore;

/// argon2id with OWASP's minimum parameters (m = 19 MiB, t = 2, p = 1) unless told otherwise.
/// The PHC string records the parameters, so raising them later keeps old hashes verifiable.
pub struct Argon2Hasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl Argon2Hasher {
    pub fn new() -> Self {
        Self::with_params(Params::new(19_456, 2, 1, None).expect("OWASP parameters are valid"))
    }

    pub fn with_params(params: Params) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            params,
            permits: Arc::new(Semaphore::new(cpus)),
        }
    }
}

impl Default for Argon2Hasher {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashingFailed> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashingFailed("hasher closed".into()))?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.expose().as_bytes(), &salt)
                .map_err(|e| HashingFailed(e.to_string()))
                .and_then(|h| {
                    PasswordHash::parse(h.to_string()).map_err(|e| HashingFailed(e.to_string()))
                })
        })
        .await
        .map_err(|e| HashingFailed(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = Argon2Hasher::new()
            .hash(Password::new("correct horse battery staple"))
            .await
            .unwrap();
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let parsed = argon2::password_hash::PasswordHash::new(hash.as_phc()).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
