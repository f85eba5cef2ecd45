//! Heartbeats of the nodes sharing one Redis, for `GET /admin/cluster`.
//!
//! Every node writes its [`NodeInfo`] every `REDIS_HEARTBEAT_SECS` under
//! `{prefix}:v1:node:{name}` with a TTL of `REDIS_HEARTBEAT_TTL_SECS`, and its name into a sorted
//! set scored by the time it was seen. The table lists the names seen within the TTL; an entry
//! that cannot be read (garbage, a wrong type) is listed by name as unreadable, never guessed.

use std::sync::{Arc, LazyLock};

use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use super::{Redis, RedisFault, reply};
use crate::config::defaults::REDIS_HEARTBEAT_TTL_SECS;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `[redis] node_name`.
    pub node: String,
    /// The data and admin listeners' addresses.
    pub data_addr: String,
    pub admin_addr: String,
    /// The bucketgate version it runs.
    pub version: String,
    /// A fingerprint of the configuration in force (the same on nodes running the same config
    /// and network lists).
    pub config: String,
    /// Unix seconds it started and was last seen.
    pub started: u64,
    pub last_seen: u64,
    /// Whether its own last Redis command got an answer.
    pub redis_healthy: bool,
}

/// One row of the table: a node's heartbeat, or the name of one whose entry is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NodeRow {
    Seen(NodeInfo),
    Unreadable { node: String, error: &'static str },
}

static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
",
    )
});

/// Drop names older than `ARGV[1]`; answer name, entry, name, entry, ...
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local names = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, n in ipairs(names) do
  out[#out + 1] = n
  local ok, v = pcall(redis.call, 'GET', ARGV[2] .. n)
  if ok and v then out[#out + 1] = v else out[#out + 1] = '' end
end
return out
",
    )
});

/// Write this node's heartbeat.
pub async fn beat(redis: &Arc<Redis>, info: &NodeInfo) -> Result<(), RedisFault> {
    let body = serde_json::to_string(info).map_err(|_| RedisFault::BadReply("encoding"))?;
    let mut call = BEAT.prepare_invoke();
    call.key(redis.key("node", &info.node))
        .key(redis.key("nodes", "seen"))
        .arg(body)
        .arg(REDIS_HEARTBEAT_TTL_SECS)
        .arg(info.last_seen)
        .arg(&info.node);
    let answer: Value = redis.invoke(&call).await?;
    reply::int(&answer).map(|_| ())
}

/// The nodes seen within the heartbeat TTL before `now`, by name.
pub async fn nodes(redis: &Arc<Redis>, now: u64) -> Result<Vec<NodeRow>, RedisFault> {
    let mut call = LIST.prepare_invoke();
    call.key(redis.key("nodes", "seen"))
        .arg(now.saturating_sub(REDIS_HEARTBEAT_TTL_SECS))
        .arg(redis.key("node", ""));
    let answer: Value = redis.invoke(&call).await?;
    let items = reply::array(&answer)?;
    if items.len() % 2 != 0 {
        return Err(RedisFault::BadReply("odd node list"));
    }
    let mut rows = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        let node = reply::text(&pair[0])?.to_owned();
        let entry = reply::opt_bytes(&pair[1])?.unwrap_or_default();
        if entry.is_empty() {
            // Its entry expired between the two reads, or was never written: not seen.
            continue;
        }
        match serde_json::from_slice::<NodeInfo>(entry) {
            Ok(info) if info.node == node => rows.push(NodeRow::Seen(info)),
            _ => rows.push(NodeRow::Unreadable {
                node,
                error: "unreadable heartbeat",
            }),
        }
    }
    Ok(rows)
}
