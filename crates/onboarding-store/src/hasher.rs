//! argon2id password hashing and verification, run on the blocking pool and bounded so a burst
//! of submissions or sign-ins cannot exhaust memory: at most one hash per core at a time, each in
//! a work area (`m_cost` KiB) that is kept and reused rather than allocated per hash
//! (docs/adr/0033).

use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
        .get_or_init(|| Arc::new(Semaphore::new(hashes_at_once())))
        .clone()
}

/// How many hashes the process runs at once: one per core.
fn hashes_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The work areas of the process's hashes, one per permit at most (a hash takes one for its
/// duration and gives it back). Each is `m_cost` KiB: allocated per hash, these 19 MiB blocks
/// went to glibc's per-thread arenas once its dynamic mmap threshold had risen past them, and
/// stayed there, one or two per blocking thread: the process grew by 200 to 300 MiB in a burst
/// of password submissions and never gave it back (docs/adr/0033).
fn work_areas() -> &'static Mutex<Vec<Vec<Block>>> {
    static AREAS: OnceLock<Mutex<Vec<Vec<Block>>>> = OnceLock::new();
    AREAS.get_or_init(Mutex::default)
}

/// Runs `f` with a work area of exactly `blocks` blocks, reused from an earlier hash when one is
/// free (a hash at another cost, an old one being verified, resizes it).
fn with_work_area<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let taken = work_areas()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop();
    let mut area = taken.unwrap_or_default();
    area.resize(blocks, Block::default());
    let result = f(&mut area);
    work_areas()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(area);
    result
}

/// argon2id of `password` with `params` and `salt`, in a reused work area; the PHC string's hash
/// has `output_len` bytes.
fn argon2id(
    params: &Params,
    version: Version,
    password: &[u8],
    salt: &[u8],
    output_len: usize,
) -> Result<Output, HashingFailed> {
    let argon2 = Argon2::new(Algorithm::Argon2id, version, params.clone());
    with_work_area(params.block_count(), |area| {
        Output::init_with(output_len, |out| {
            argon2
                .hash_password_into_with_memory(password, salt, out, area)
                .map_err(Into::into)
        })
    })
    .map_err(|e| HashingFailed(e.to_string()))
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

    /// Allocates, now, a work area at this hasher's cost for every hash the process may run at
    /// once (one per core), each written through so that it is resident: a process that hashes
    /// holds its hashing memory from its start instead of growing into it with its first burst
    /// of submissions, and a memory limit too small for it fails the start rather than a burst
    /// (docs/adr/0040). Called once, when the gateway starts, before any hash runs.
    pub fn reserve_work_areas(&self) {
        let blocks = self.params.block_count();
        let mut areas = work_areas()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let missing = hashes_at_once().saturating_sub(areas.len());
        areas.extend(std::iter::repeat_with(Vec::new).take(missing));
        for area in areas.iter_mut() {
            area.resize(blocks, Block::default());
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
            let unreadable = |e: argon2::password_hash::Error| {
                HashingFailed(format!("unreadable stored hash: {e}"))
            };
            let hash = argon2::password_hash::PasswordHash::new(phc.expose_secret())
                .map_err(unreadable)?;
            if Algorithm::try_from(hash.algorithm).map_err(unreadable)? != Algorithm::Argon2id {
                return Err(HashingFailed("the stored hash is not argon2id".into()));
            }
            let version = hash
                .version
                .map(Version::try_from)
                .transpose()
                .map_err(|e| HashingFailed(format!("unreadable stored hash: {e}")))?
                .unwrap_or_default();
            let params = Params::try_from(&hash).map_err(unreadable)?;
            let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
                return Err(HashingFailed(
                    "unreadable stored hash: no salt or no hash".into(),
                ));
            };
            let mut salt_bytes = [0u8; 64];
            let salt = salt.decode_b64(&mut salt_bytes).map_err(unreadable)?;
            let computed = argon2id(
                &params,
                version,
                password.expose().as_bytes(),
                salt,
                expected.len(),
            )?;
            // `Output`'s equality is the password-hash crate's, in constant time.
            Ok(computed == expected)
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
        phc(&self.params, &random, &salt).map(SecretString::from)
    }
}

/// The PHC string of argon2id (version 0x13) over `password` with `params` and `salt`.
fn phc(params: &Params, password: &[u8], salt: &SaltString) -> Result<String, HashingFailed> {
    let failed = |e: argon2::password_hash::Error| HashingFailed(e.to_string());
    let salt = salt.as_salt();
    let mut salt_bytes = [0u8; 64];
    let output = argon2id(
        params,
        Version::V0x13,
        password,
        salt.decode_b64(&mut salt_bytes).map_err(failed)?,
        params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
    )?;
    let hash = argon2::password_hash::PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(failed)?,
        salt: Some(salt),
        hash: Some(output),
    };
    Ok(hash.to_string())
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
            phc(&params, password.expose().as_bytes(), &salt)
                .and_then(|h| PasswordHash::parse(h).map_err(|e| HashingFailed(e.to_string())))
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

    #[tokio::test]
    async fn a_reused_work_area_gives_the_same_hashes_at_any_cost() {
        // Hashes at two costs, one after another, reuse (and resize) the same work areas; each
        // must still be the hash argon2's own implementation computes.
        let raised = Argon2Hasher::with_params(Params::new(24_576, 2, 1, None).unwrap());
        let cheap = Argon2Hasher::new();
        for hasher in [&raised, &cheap, &raised, &cheap] {
            let hash = hasher.hash(Password::new("correct horse")).await.unwrap();
            let parsed = argon2::password_hash::PasswordHash::new(hash.as_phc()).unwrap();
            assert!(Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok());
            assert!(hasher
                .verify(
                    Password::new("correct horse"),
                    SecretString::from(hash.as_phc().to_owned())
                )
                .await
                .unwrap());
        }
        let held = work_areas().lock().unwrap().len();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(held >= 1, "the work areas are kept for the next hash");
        // One per permit, and one more at most for a dummy hash made beside them (the tests of
        // this module run in parallel).
        assert!(
            held <= cores + 2,
            "{held} work areas kept for {cores} cores"
        );
    }
}
