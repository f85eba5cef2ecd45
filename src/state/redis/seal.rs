//! Sealing values before they go to Redis: AES-256-GCM (`ring::aead`) under the `[redis]
//! seal_key`, so Redis (or a dump of it, or anyone who can read its traffic) never holds a usable
//! credential or key.
//!
//! A sealed value is `version (1 byte) | key id (8 bytes) | nonce (12 bytes) | ciphertext + tag`.
//! - The nonce is 12 random bytes per value (`SystemRandom`); at the volumes of sessions and
//!   login keys a random 96-bit nonce never repeats in practice.
//! - The key id is the first 8 bytes of SHA-256 over a domain label and the key: a value sealed
//!   under another key is recognized as such (no decryption attempt) and treated like garbage.
//! - The associated data is the version, the key id and the Redis key the value is stored
//!   under, so a value copied to another key (another session's hash) does not open there.
//!
//! Opening fails for anything else: [`OpenError::OtherKey`] for a well-formed value of this
//! version sealed under another key id (after a `seal_key` change), [`OpenError::Broken`] for
//! the rest (truncated, another version, a changed byte). Callers treat a failure as "Redis
//! answered garbage" or as "absent" for that lookup, never as an allow. Nothing here logs.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// The format version of sealed values (the first byte).
const FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const KEY_ID_CONTEXT: &[u8] = b"bucketgate-redis-seal-key-id-v1\n";

/// The `[redis] seal_key`, ready to seal and open. Never printed.
pub struct SealKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
    rng: SystemRandom,
}

/// Why a value does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed (this format) under another key: e.g. before a `seal_key` change.
    OtherKey,
    /// Not a value this key sealed for this Redis key: garbage, truncated, tampered.
    Broken,
}

/// The crypto library refused: the system random number generator failed, or (never with a
/// 32-byte key) the key was refused.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("sealing a value for redis failed (random number generator or key setup)")]
pub struct SealError;

impl SealKey {
    /// A key from its 32 bytes (the config's 64 hex digits, decoded).
    pub fn new(bytes: &[u8; 32]) -> Result<SealKey, SealError> {
        let mut id = [0u8; KEY_ID_LEN];
        let digest = Sha256::new()
            .chain_update(KEY_ID_CONTEXT)
            .chain_update(bytes)
            .finalize();
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        // AES-256 takes exactly 32 bytes, which the type guarantees.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError)?;
        Ok(SealKey {
            key: LessSafeKey::new(unbound),
            id,
            rng: SystemRandom::new(),
        })
    }

    /// The key id sealed values carry (hex, for logs that must say which key an entry has).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// `plaintext` sealed for storage under the Redis key `redis_key`.
    pub fn seal(&self, redis_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(FORMAT);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.id, redis_key)),
                &mut body,
            )
            .map_err(|_| SealError)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plaintext of a value read from `redis_key`, or why it is not a value this key sealed
    /// for that Redis key.
    pub fn open(&self, redis_key: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() || sealed[0] != FORMAT {
            return Err(OpenError::Broken);
        }
        if sealed[1..1 + KEY_ID_LEN] != self.id {
            return Err(OpenError::OtherKey);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + KEY_ID_LEN..HEADER_LEN]);
        let mut body = sealed[HEADER_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.id, redis_key)),
                &mut body,
            )
            .map_err(|_| OpenError::Broken)?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

fn aad(id: &[u8; KEY_ID_LEN], redis_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + KEY_ID_LEN + redis_key.len());
    aad.push(FORMAT);
    aad.extend_from_slice(id);
    aad.extend_from_slice(redis_key.as_bytes());
    aad
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_its_redis_key() {
        let key = SealKey::new(&[7u8; 32]).unwrap();
        let sealed = key.seal("p:v1:session:ab", b"secret credentials").unwrap();
        assert!(
            !sealed
                .windows(b"secret".len())
                .any(|w| w == b"secret".as_slice()),
            "no plaintext in the sealed value"
        );
        assert_eq!(
            key.open("p:v1:session:ab", &sealed).unwrap(),
            b"secret credentials"
        );
        // Moved to another key, under another seal key, truncated, flipped, garbage.
        assert_eq!(key.open("p:v1:session:cd", &sealed), Err(OpenError::Broken));
        assert_eq!(
            SealKey::new(&[8u8; 32])
                .unwrap()
                .open("p:v1:session:ab", &sealed),
            Err(OpenError::OtherKey)
        );
        for n in [0, 1, HEADER_LEN, sealed.len() - 1] {
            assert!(key.open("p:v1:session:ab", &sealed[..n]).is_err(), "{n}");
        }
        for i in [0, HEADER_LEN - 1, HEADER_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                key.open("p:v1:session:ab", &bad),
                Err(OpenError::Broken),
                "{i}"
            );
        }
        let mut other_id = sealed.clone();
        other_id[3] ^= 1;
        assert_eq!(
            key.open("p:v1:session:ab", &other_id),
            Err(OpenError::OtherKey)
        );
        assert!(key.open("p:v1:session:ab", &[0xff; 64]).is_err());
        // Two seals of one value differ (random nonce).
        assert_ne!(
            sealed,
            key.seal("p:v1:session:ab", b"secret credentials").unwrap()
        );
    }
}
