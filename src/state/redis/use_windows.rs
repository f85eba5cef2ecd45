//! Use windows of signed URLs in Redis ([`RedisUseWindows`], a [`SharedUseWindowStore`]): a
//! window started on one node continues (and is bound) on every node.
//!
//! - Key: `{prefix}:v1:window:{hex SHA-256 of the token}` ([`WindowKey`]; the token is never
//!   stored). Value: `w1 {first} {last} {until} {client address}`, with a TTL that ends at
//!   `until` on the gateway's token clock (`EX until - now`; later updates keep it).
//! - One Lua script per use ([`SCRIPT`]) reads the entry, decides and writes, so two nodes
//!   judging the same token at once cannot both start its window (nor bind it to two
//!   addresses). The script is [`decide`] written again in Lua; a test runs both on the same
//!   sequences of uses.
//! - Redis down, slow, a script error (the key of another type), or an entry that does not
//!   parse: [`UseWindowError::Unavailable`], and the request is refused (503, fail closed): a
//!   window cannot be judged without its state, and a fresh start would rebind it.
//!
//! [`decide`]: crate::identity::use_window::decide

use std::sync::Arc;

use redis::Script;

use super::Redis;
use super::saml_health::Degraded;
use crate::identity::use_window::{
    BoxFuture, Lapse, Outcome, SharedUseWindowStore, Use, UseWindowError,
};

/// The kind part of window keys.
const KIND: &str = "window";

/// `decide` + the write, atomically. KEYS[1]: the window. ARGV: now, first-use deadline, idle,
/// max, bind (1/0), client address, record (1/0). Returns 0 started, 1 continued, 2 not
/// started, 3 lapsed (idle), 4 lapsed (max), 5 elsewhere, -1 an entry that does not parse.
pub const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local first_use_by = tonumber(ARGV[2])
local idle = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local bind = ARGV[5] == '1'
local client = ARGV[6]
local record = ARGV[7] == '1'
local v = redis.call('GET', KEYS[1])
if not v then
  if now >= first_use_by then return 2 end
  if record then
    local keep = math.max(now + max, first_use_by)
    redis.call('SET', KEYS[1], string.format('w1 %d %d %d %s', now, now, keep, client),
      'EX', math.max(keep - now, 1))
  end
  return 0
end
local first, last, keep, bound = string.match(v, '^w1 (%d+) (%d+) (%d+) (%S+)$')
if not first then return -1 end
first = tonumber(first)
last = tonumber(last)
if bind and bound ~= client then return 5 end
if now >= first + max then return 4 end
if now > last + idle then return 3 end
if record and now > last then
  redis.call('SET', KEYS[1], string.format('w1 %d %d %s %s', first, now, keep, bound), 'KEEPTTL')
end
return 1
";

/// Window state in Redis (see the module doc).
pub struct RedisUseWindows {
    redis: Arc<Redis>,
    script: Script,
    health: Degraded,
}

impl RedisUseWindows {
    pub fn new(redis: Arc<Redis>) -> RedisUseWindows {
        RedisUseWindows {
            redis,
            script: Script::new(SCRIPT),
            health: Degraded::new("use windows", "window tokens refused"),
        }
    }

    /// This store's `/readyz` flag.
    pub fn health(&self) -> &Degraded {
        &self.health
    }

    /// The Redis key of a window token's use.
    pub fn redis_key(&self, use_: &Use) -> String {
        self.redis.key(KIND, &use_.key.to_hex())
    }

    async fn use_token(&self, use_: &Use, record: bool) -> Result<Outcome, UseWindowError> {
        let w = use_.window;
        let mut invocation = self.script.key(self.redis_key(use_));
        invocation
            .arg(use_.now)
            .arg(use_.first_use_by)
            .arg(w.idle_secs())
            .arg(w.max_secs())
            .arg(u8::from(w.binds()))
            .arg(use_.client.to_string())
            .arg(u8::from(record));
        let answer = self.redis.invoke::<i64>(&invocation).await;
        self.health.note(&answer);
        let code = match answer {
            Ok(code) => code,
            Err(fault) => {
                tracing::warn!(%fault, "use-window store unavailable: request refused");
                return Err(UseWindowError::Unavailable);
            }
        };
        match code {
            0 => Ok(Outcome::Started),
            1 => Ok(Outcome::Continued),
            2 => Ok(Outcome::NotStarted),
            3 => Ok(Outcome::Lapsed(Lapse::Idle)),
            4 => Ok(Outcome::Lapsed(Lapse::Max)),
            5 => Ok(Outcome::Elsewhere),
            _ => {
                tracing::warn!(code, "use-window entry in redis does not parse: refused");
                Err(UseWindowError::Unavailable)
            }
        }
    }
}

impl SharedUseWindowStore for RedisUseWindows {
    fn use_token<'a>(
        &'a self,
        use_: &'a Use,
        record: bool,
    ) -> BoxFuture<'a, Result<Outcome, UseWindowError>> {
        Box::pin(RedisUseWindows::use_token(self, use_, record))
    }
}
