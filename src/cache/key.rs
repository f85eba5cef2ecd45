//! What identifies a cache entry, and the one byte encoding of it.
//!
//! A [`CacheKey`] names one response body: the source, the key's exact bytes (decoded once, never
//! normalized), the object's version (its ETag), the representation (an opaque normalized string
//! the producer chooses: `o` for the object as stored, later `iiif:<normalized params>`) and the
//! authority [`Partition`]. A chunk of it adds the chunk index. [`ChunkId::encode`] turns all of
//! that into bytes that are unambiguous (every field length-prefixed), so two different entries
//! never share a memory slot or a disk file, and the disk tier can bind them as associated data.
//!
//! The metadata of an object is known before its version, so it is keyed by [`ObjectId`]
//! (source, key, partition) alone. The disk tier keeps it too, so a restart can revalidate an
//! object with one HEAD and serve its chunks from disk: [`ObjectId::meta_id`] is that entry's id
//! (its own encoding tag, so it never shares a file with a chunk) and [`encode_meta`] /
//! [`decode_meta`] its body.

use std::sync::Arc;

use std::time::{Duration, UNIX_EPOCH};

use crate::backend::{Caller, ObjectMeta};

/// Whose view of the store a response is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Partition {
    /// Read with the gateway's credentials: the same bytes for everyone the policy admits.
    Gateway,
    /// Read with a user's own credentials (a SAML session's): the assumed-role ARN STS returned
    /// for that session, so only callers with that authority share an entry.
    User(Arc<str>),
}

impl Partition {
    /// The partition of whoever reads for this request ([`Caller::partition`]).
    pub fn of(caller: &Caller<'_>) -> Partition {
        caller
            .partition()
            .map_or(Partition::Gateway, |arn| Partition::User(arn.into()))
    }
}

/// An object as one authority sees it, before its version is known: the metadata table's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub(crate) source: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) partition: Partition,
}

impl ObjectId {
    pub fn new(source: &str, key: &str, partition: Partition) -> ObjectId {
        ObjectId {
            source: source.into(),
            key: key.into(),
            partition,
        }
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The disk id of this object's persisted metadata: `bgm1`, then source, key and partition
    /// encoded as in [`ChunkId::encode`] (no version, representation or index: one per object as
    /// this authority sees it).
    pub fn meta_id(&self) -> Box<[u8]> {
        let mut out = Vec::with_capacity(
            4 + 4 + self.source.len() + 4 + self.key.len() + 4 + 1 + arn_len(&self.partition),
        );
        out.extend_from_slice(META_ENCODING);
        push_field(&mut out, &[self.source.as_bytes()]);
        push_field(&mut out, &[self.key.as_bytes()]);
        push_partition(&mut out, &self.partition);
        out.into_boxed_slice()
    }
}

/// Whether a disk id is an object's metadata ([`ObjectId::meta_id`]) rather than a chunk.
pub fn is_meta_id(id: &[u8]) -> bool {
    id.starts_with(META_ENCODING)
}

/// The representation of the object as stored (`/o/`).
pub const ORIGINAL: &str = "o";

/// What identifies one response for the cache (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    object: ObjectId,
    version: Arc<str>,
    representation: Arc<str>,
}

impl CacheKey {
    /// `representation` must already be normalized by its producer: two strings are two entries.
    pub fn new(object: ObjectId, version: &str, representation: &str) -> CacheKey {
        CacheKey {
            object,
            version: version.into(),
            representation: representation.into(),
        }
    }
    pub fn object(&self) -> &ObjectId {
        &self.object
    }
    pub fn source(&self) -> &str {
        &self.object.source
    }
    pub fn key(&self) -> &[u8] {
        self.object.key.as_bytes()
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn representation(&self) -> &str {
        &self.representation
    }
    pub fn partition(&self) -> &Partition {
        &self.object.partition
    }

    /// The id of chunk `index` of this entry.
    pub fn chunk(&self, index: u64) -> ChunkId {
        ChunkId::encode(self, index)
    }
}

/// The encoded identity of one stored chunk: what the memory tier keys on and what the disk tier
/// hashes for a file name and binds as associated data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkId(Box<[u8]>);

/// Version tag of the encoding: a change of layout must not read old disk entries as new ones.
const ENCODING: &[u8; 4] = b"bgc1";
/// Tag of an object's metadata id: never a prefix of a chunk id, so never the same disk file.
const META_ENCODING: &[u8; 4] = b"bgm1";
/// Layout version of a persisted [`ObjectMeta`] body.
const META_BODY_VERSION: u8 = 1;

impl ChunkId {
    /// `bgc1`, then source, key, version, representation, partition, each as a big-endian `u32`
    /// length and its bytes (the partition is `g`, or `u` and the role ARN), then the chunk
    /// index as a big-endian `u64`.
    pub fn encode(key: &CacheKey, index: u64) -> ChunkId {
        let fields: [&[u8]; 4] = [
            key.source().as_bytes(),
            key.key(),
            key.version().as_bytes(),
            key.representation().as_bytes(),
        ];
        let len = 4
            + fields.iter().map(|f| 4 + f.len()).sum::<usize>()
            + 4
            + 1
            + arn_len(key.partition())
            + 8;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(ENCODING);
        for field in fields {
            push_field(&mut out, &[field]);
        }
        push_partition(&mut out, key.partition());
        out.extend_from_slice(&index.to_be_bytes());
        ChunkId(out.into_boxed_slice())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The source and key this id names (for purges), read back from the encoding.
    pub fn source_and_key(&self) -> Option<(&[u8], &[u8])> {
        let rest = self.0.strip_prefix(ENCODING.as_slice())?;
        let (source, rest) = take_field(rest)?;
        let (key, _) = take_field(rest)?;
        Some((source, key))
    }
}

fn arn_len(partition: &Partition) -> usize {
    match partition {
        Partition::Gateway => 0,
        Partition::User(arn) => arn.len(),
    }
}

/// The partition field: `g`, or `u` and the role ARN.
fn push_partition(out: &mut Vec<u8>, partition: &Partition) {
    match partition {
        Partition::Gateway => push_field(out, &[b"g"]),
        Partition::User(arn) => push_field(out, &[b"u", arn.as_bytes()]),
    }
}

/// The body of a persisted [`ObjectMeta`]: version 1, size (`u64`), then ETag, Last-Modified
/// (Unix seconds, `u64`) and content type, each a presence byte (0/1) and, when present, the
/// value (strings as a `u32` length and UTF-8 bytes). Big-endian.
pub fn encode_meta(meta: &ObjectMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 8
            + 5
            + meta.etag.as_ref().map_or(0, String::len)
            + 9
            + 5
            + meta.content_type.as_ref().map_or(0, String::len),
    );
    out.push(META_BODY_VERSION);
    out.extend_from_slice(&meta.size.to_be_bytes());
    let push_text = |out: &mut Vec<u8>, text: &Option<String>| match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            push_field(out, &[text.as_bytes()]);
        }
    };
    push_text(&mut out, &meta.etag);
    match meta
        .last_modified
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        None => out.push(0),
        Some(since) => {
            out.push(1);
            out.extend_from_slice(&since.as_secs().to_be_bytes());
        }
    }
    push_text(&mut out, &meta.content_type);
    out
}

/// [`encode_meta`] read back; `None` for anything else (another layout version, trailing bytes).
pub fn decode_meta(bytes: &[u8]) -> Option<ObjectMeta> {
    fn take_text(bytes: &[u8]) -> Option<(Option<String>, &[u8])> {
        let (present, rest) = bytes.split_first()?;
        match present {
            0 => Some((None, rest)),
            1 => {
                let (text, rest) = take_field(rest)?;
                Some((Some(String::from_utf8(text.to_vec()).ok()?), rest))
            }
            _ => None,
        }
    }
    let rest = bytes.strip_prefix(&[META_BODY_VERSION])?;
    let (size, rest) = rest.split_first_chunk::<8>()?;
    let (etag, rest) = take_text(rest)?;
    let (present, rest) = rest.split_first()?;
    let (last_modified, rest) = match present {
        0 => (None, rest),
        1 => {
            let (secs, rest) = rest.split_first_chunk::<8>()?;
            let at = UNIX_EPOCH.checked_add(Duration::from_secs(u64::from_be_bytes(*secs)))?;
            (Some(at), rest)
        }
        _ => return None,
    };
    let (content_type, rest) = take_text(rest)?;
    rest.is_empty().then_some(ObjectMeta {
        size: u64::from_be_bytes(*size),
        etag,
        last_modified,
        content_type,
    })
}

fn push_field(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Keys are at most 1024 bytes and sources, versions, ARNs short: never near u32::MAX.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    fn key(source: &str, k: &str, version: &str, partition: Partition) -> CacheKey {
        CacheKey::new(ObjectId::new(source, k, partition), version, ORIGINAL)
    }

    #[test]
    fn cache_key_chunk_ids_differ_in_every_field() {
        let base = key("a", "b", "\"v1\"", Partition::Gateway);
        let ids = [
            base.chunk(0),
            base.chunk(1),
            key("ab", "", "\"v1\"", Partition::Gateway).chunk(0),
            key("a", "b", "\"v2\"", Partition::Gateway).chunk(0),
            key("a", "b", "\"v1\"", Partition::User("arn:r".into())).chunk(0),
            CacheKey::new(
                ObjectId::new("a", "b", Partition::Gateway),
                "\"v1\"",
                "iiif:full",
            )
            .chunk(0),
            key("a", "b\"v1\"", "", Partition::Gateway).chunk(0),
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn cache_key_meta_id_is_per_object_and_partition_and_never_a_chunk_id() {
        let a = ObjectId::new("a", "b", Partition::Gateway);
        let ids = [
            a.meta_id(),
            ObjectId::new("a", "c", Partition::Gateway).meta_id(),
            ObjectId::new("ab", "", Partition::Gateway).meta_id(),
            ObjectId::new("a", "b", Partition::User("arn:r".into())).meta_id(),
        ];
        for (i, x) in ids.iter().enumerate() {
            assert!(is_meta_id(x));
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        let chunk = key("a", "b", "\"v1\"", Partition::Gateway).chunk(0);
        assert!(!is_meta_id(chunk.as_bytes()));
        assert!(!chunk.as_bytes().starts_with(&ids[0]));
    }

    #[test]
    fn cache_key_meta_encoding_round_trips_and_refuses_anything_else() {
        let full = ObjectMeta {
            size: 9000,
            etag: Some("\"abc\"".to_owned()),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            content_type: Some("image/png".to_owned()),
        };
        let bare = ObjectMeta {
            size: 0,
            etag: None,
            last_modified: None,
            content_type: None,
        };
        for meta in [&full, &bare] {
            let bytes = encode_meta(meta);
            assert_eq!(decode_meta(&bytes).as_ref(), Some(meta));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode_meta(&longer), None, "trailing bytes");
            assert_eq!(decode_meta(&bytes[..bytes.len() - 1]), None, "truncated");
            let mut other = bytes;
            other[0] = 2;
            assert_eq!(decode_meta(&other), None, "another layout version");
        }
    }

    #[test]
    fn cache_key_chunk_id_gives_back_source_and_key() {
        let id = key("src", "a//b", "\"v\"", Partition::Gateway).chunk(7);
        assert_eq!(
            id.source_and_key(),
            Some((b"src".as_slice(), b"a//b".as_slice()))
        );
    }

    #[test]
    fn cache_key_partition_is_the_gateway_or_the_users_assumed_role_arn() {
        use crate::credentials::UserCredentials;
        assert_eq!(Partition::of(&Caller::Gateway), Partition::Gateway);
        let credentials = aws_credential_types::Credentials::new("AKIA", "s", None, None, "test");
        let arn = "arn:aws:sts::123456789012:assumed-role/Labeler/alice";
        let user = Caller::User(UserCredentials {
            credentials: &credentials,
            role_arn: arn,
        });
        assert_eq!(Partition::of(&user), Partition::User(arn.into()));
    }
}
