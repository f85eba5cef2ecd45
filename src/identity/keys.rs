//! Verification keys: config key material -> [`VerifyKey`] (a `DecodingKey` pinned to its
//! algorithm), the stand-in keys an unknown `kid` is checked against, and the embedded default's
//! development key (made here, on the composition root's request; config only reads it).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::defaults::DEV_KEY_FILE;
use crate::config::{KeyAlg, KeyConfig};

/// One key a token may name by `kid`.
pub struct VerifyKey {
    alg: Algorithm,
    decoding: DecodingKey,
    allow_non_expiring: bool,
}

impl VerifyKey {
    pub fn from_config(key: &KeyConfig) -> Result<VerifyKey, jsonwebtoken::errors::Error> {
        let decoding = key.material.decoding_key(key.alg)?;
        Ok(VerifyKey::new(key.alg, decoding, key.allow_non_expiring))
    }

    /// `decoding` must be a key of `alg`'s family.
    pub fn new(alg: KeyAlg, decoding: DecodingKey, allow_non_expiring: bool) -> VerifyKey {
        VerifyKey {
            alg: algorithm(alg),
            decoding,
            allow_non_expiring,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn allows_non_expiring(&self) -> bool {
        self.allow_non_expiring
    }

    /// Whether `signature` (base64url, the token's third part) signs `message` (its first two
    /// parts) under this key's pinned algorithm: constant-time for HMAC. Any failure (a
    /// signature that is not base64url, a key that does not fit) is `false`, never an early
    /// refusal, so the caller goes on to the claims either way.
    pub fn signature_matches(&self, message: &str, signature: &str) -> bool {
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.decoding, self.alg)
            .unwrap_or(false)
    }
}

/// Keys that stand in for an unknown `kid`: one per algorithm the gateway accepts, fresh random
/// material nobody holds. A token naming no key we know is still put through a signature check
/// of its own algorithm, so the time it takes does not say which kids exist; the result is
/// thrown away (the token is refused for its kid).
pub struct StandIns {
    hs256: VerifyKey,
    eddsa: VerifyKey,
    es256: VerifyKey,
}

impl StandIns {
    pub fn generate() -> Result<StandIns, StandInError> {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StandInError)?;
        let public = |alg: &'static rcgen::SignatureAlgorithm| {
            rcgen::KeyPair::generate_for(alg)
                .map(|pair| pair.public_key_pem())
                .map_err(|_| StandInError)
        };
        let ed = DecodingKey::from_ed_pem(public(&rcgen::PKCS_ED25519)?.as_bytes())
            .map_err(|_| StandInError)?;
        let es = DecodingKey::from_ec_pem(public(&rcgen::PKCS_ECDSA_P256_SHA256)?.as_bytes())
            .map_err(|_| StandInError)?;
        Ok(StandIns {
            hs256: VerifyKey::new(KeyAlg::Hs256, DecodingKey::from_secret(&secret), false),
            eddsa: VerifyKey::new(KeyAlg::EdDsa, ed, false),
            es256: VerifyKey::new(KeyAlg::Es256, es, false),
        })
    }

    /// The stand-in for a token's header `alg` (HS256 for any algorithm we do not accept).
    pub fn for_alg(&self, alg: Algorithm) -> &VerifyKey {
        match alg {
            Algorithm::EdDSA => &self.eddsa,
            Algorithm::ES256 => &self.es256,
            _ => &self.hs256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed while making the unknown-kid stand-in keys")]
pub struct StandInError;

pub fn algorithm(alg: KeyAlg) -> Algorithm {
    match alg {
        KeyAlg::Hs256 => Algorithm::HS256,
        KeyAlg::EdDsa => Algorithm::EdDSA,
        KeyAlg::Es256 => Algorithm::ES256,
    }
}

/// The development HS256 secret in `dir/dev-hs256.key`: created on first use (32 random bytes,
/// hex, mode 0600, written whole or not at all), reused afterwards. Returns the file's path; its
/// text (64 hex characters) is the HMAC key, as any `file:` secret would be.
pub fn ensure_dev_key(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(DEV_KEY_FILE);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    let hex = hex::encode(bytes);
    let tmp = dir.join(format!(".{DEV_KEY_FILE}.{}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(hex.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    // Two processes starting at once: the first rename wins, and both then read the same key.
    if path.is_file() {
        let _ = std::fs::remove_file(&tmp);
        return Ok(path);
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dev_key_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = ensure_dev_key(&dir.path().join(".bucketgate")).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim_end().len(), 64);
        assert!(first.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = ensure_dev_key(&dir.path().join(".bucketgate")).unwrap();
        assert_eq!(std::fs::read_to_string(again).unwrap(), first);
    }
}
