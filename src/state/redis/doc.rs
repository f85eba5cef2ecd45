//! A small document every node follows (the admin's network lists): a Redis hash holding the
//! body, who wrote it, an epoch (a random id set when the document is first written) and a
//! counter. Nodes compare `epoch:counter` tags, so a Redis that lost the document and got it
//! back is never mistaken for an old version.
//!
//! Writes are compare-and-set on the tag the writer last applied: a change made on another node
//! meanwhile is not silently overwritten (the writer catches up and the admin retries). The body
//! is opaque bytes here; its owner validates it as it would validate an admin request.

use std::sync::{Arc, LazyLock};

use redis::{Script, Value};

use super::{Redis, RedisFault, reply};

/// `{tag}` when `ARGV[1]` is the tag in force, `{tag, body, from}` when it is not, `{false}`
/// when there is no document.
static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1], 'epoch', 'counter', 'body', 'from')
if not f[1] then return {false} end
local tag = f[1] .. ':' .. (f[2] or '0')
if tag == ARGV[1] then return {tag} end
return {tag, f[3] or '', f[4] or ''}
",
    )
});

/// `{1, new tag}` if the tag in force is `ARGV[1]` ('' = no document), else `{0, tag in force}`.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1], 'epoch', 'counter')
local tag = ''
if f[1] then tag = f[1] .. ':' .. (f[2] or '0') end
if tag ~= ARGV[1] then return {0, tag} end
local e = f[1]
if not e then
  e = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', e)
end
local n = redis.call('HINCRBY', KEYS[1], 'counter', 1)
redis.call('HSET', KEYS[1], 'body', ARGV[3], 'from', ARGV[4])
return {1, e .. ':' .. n}
",
    )
});

/// What [`SharedDoc::fetch`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// No document in Redis.
    Missing,
    /// The tag asked about is the one in force.
    Same,
    /// Another version: its tag, body and writer.
    Changed {
        tag: String,
        body: Vec<u8>,
        from: String,
    },
}

/// One named document (`{prefix}:v1:doc:{name}`).
pub struct SharedDoc {
    redis: Arc<Redis>,
    key: String,
}

impl SharedDoc {
    pub fn new(redis: Arc<Redis>, name: &str) -> SharedDoc {
        let key = redis.key("doc", name);
        SharedDoc { redis, key }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// The document, unless `known` is the tag in force.
    pub async fn fetch(&self, known: Option<&str>) -> Result<Fetched, RedisFault> {
        let mut call = FETCH.prepare_invoke();
        call.key(&self.key).arg(known.unwrap_or(""));
        let answer: Value = self.redis.invoke(&call).await?;
        let items = reply::array(&answer)?;
        match items {
            [first] => match reply::opt_text(first)? {
                None => Ok(Fetched::Missing),
                Some(_) => Ok(Fetched::Same),
            },
            [tag, body, from] => {
                let body = reply::opt_bytes(body)?
                    .ok_or(RedisFault::BadReply("document without a body"))?;
                Ok(Fetched::Changed {
                    tag: reply::text(tag)?.to_owned(),
                    body: body.to_vec(),
                    from: reply::text(from)?.to_owned(),
                })
            }
            _ => Err(RedisFault::BadReply("document reply of the wrong length")),
        }
    }

    /// Write `body` if `expected` (`None`: no document) is the tag in force: `Ok(new tag)`, or
    /// `Err(tag in force)` when another node wrote first.
    pub async fn publish(
        &self,
        expected: Option<&str>,
        body: &[u8],
        from: &str,
    ) -> Result<Result<String, String>, RedisFault> {
        let mut call = PUBLISH.prepare_invoke();
        call.key(&self.key)
            .arg(expected.unwrap_or(""))
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(body)
            .arg(from);
        let answer: Value = self.redis.invoke(&call).await?;
        match reply::array(&answer)? {
            [done, tag] => {
                let tag = reply::text(tag)?.to_owned();
                Ok(if reply::int(done)? == 1 {
                    Ok(tag)
                } else {
                    Err(tag)
                })
            }
            _ => Err(RedisFault::BadReply("publish reply of the wrong length")),
        }
    }
}
