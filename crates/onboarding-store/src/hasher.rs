//! argon2id password hashing and verification, run on the blocking pool and bounded so a burst
//! of submissions or sign-ins cannot exhaust memory (each hash holds `m_cost` KiB).

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use onboarding_config::PasswordHashingSettings;
use onboarding_domain::password::{HashAlgorithm, HashScheme, Password, PasswordHash};
use onboarding_domain::{HashingFailed, PasswordHasher};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// The process's bound on argon2 work: one hash or verification per core at a time, shared by
/// every `Argon2Hasher` of the process (the aggregate's, the verify endpoint's).
fn permits() -> Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS
        .get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            Arc::new(Semaphore::new(cpus))
        })
        .clone()
}

/// argon2id with OWASP's minimum parameters (m = 19 MiB, t = 2, p = 1) unless told otherwise.
/// The PHC string records the parameters, so raising them later keeps old hashes verifiable.
#[derive(Clone)]
pub struct Argon2Hasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl Argon2Hasher {
    pub fn new() -> Self {
        Self::with_params(Params::new(19_456, 2, 1, None).expect("OWASP parameters are valid"))
    }

    /// The hasher at the cost of `[password_hashing]`.
    pub fn configured(settings: &PasswordHashingSettings) -> Result<Self, argon2::Error> {
        Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map(Self::with_params)
    }

    pub fn with_params(params: Params) -> Self {
        Self {
            params,
            permits: permits(),
        }
    }

    /// The scheme of the hashes this hasher makes: a stored hash weaker than it is rehashed
    /// when its password is next verified.
    pub fn scheme(&self) -> HashScheme {
        HashScheme {
            algorithm: HashAlgorithm::Argon2id,
            version: u32::from(Version::V0x13),
            memory_kib: self.params.m_cost(),
            iterations: self.params.t_cost(),
            parallelism: self.params.p_cost(),
        }
    }

    /// Whether `password` is the one `phc` was made from, computed with the hash's own
    /// parameters on the blocking pool, within the process's bound. The comparison is the argon2
    /// crate's, in constant time. A PHC string that cannot be read is an error, not a "no".
    pub async fn verify(
        &self,
        password: Password,
        phc: SecretString,
    ) -> Result<bool, HashingFailed> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashingFailed("hasher closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let hash = argon2::password_hash::PasswordHash::new(phc.expose_secret())
                .map_err(|e| HashingFailed(format!("unreadable stored hash: {e}")))?;
            match Argon2::default().verify_password(password.expose().as_bytes(), &hash) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(HashingFailed(e.to_string())),
            }
        })
        .await
        .map_err(|e| HashingFailed(e.to_string()))?
    }

    /// A hash of a random password at this hasher's cost, made once at start: an unknown user's
    /// password is verified against it, so that answering "no such user" costs what answering
    /// "wrong password" does. Blocks for one hash.
    pub fn dummy(&self) -> Result<SecretString, HashingFailed> {
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password(&random, &salt)
            .map(|h| SecretString::from(h.to_string()))
            .map_err(|e| HashingFailed(e.to_string()))
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
    async fn verify_accepts_the_password_refuses_others_and_reads_the_hashs_own_cost() {
        let cheap = Argon2Hasher::new();
        let hash = cheap
            .hash(Password::new("correct horse battery staple"))
            .await
            .unwrap();
        // A hasher at a raised cost still verifies a hash made at the old one.
        let raised = Argon2Hasher::with_params(Params::new(32_768, 3, 1, None).unwrap());
        let phc = || SecretString::from(hash.as_phc().to_owned());
        assert!(raised
            .verify(Password::new("correct horse battery staple"), phc())
            .await
            .unwrap());
        assert!(!raised
            .verify(Password::new("correct horse battery stapler"), phc())
            .await
            .unwrap());
        assert!(hash.scheme().is_weaker_than(&raised.scheme()));
        assert!(!hash.scheme().is_weaker_than(&cheap.scheme()));
        assert!(raised
            .verify(Password::new("x"), SecretString::from("garbage".to_owned()))
            .await
            .is_err());
        // The dummy is a hash at the hasher's cost that no password opens.
        let dummy = raised.dummy().unwrap();
        assert!(dummy
            .expose_secret()
            .starts_with("$argon2id$v=19$m=32768,t=3,p=1$"));
        assert!(!raised.verify(Password::new(""), dummy).await.unwrap());
    }

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
