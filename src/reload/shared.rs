//! `[redis]`: the admin's network lists followed by every node.
//!
//! A `PUT`/`PATCH /admin/network` on any node first catches up with the shared document, then
//! validates and builds the change as on one node, publishes it (compare-and-set on the version
//! it changed: a change made elsewhere meanwhile is a 409, never overwritten), persists it to
//! its own `network.json` and puts it in force. Every node polls the document's version every
//! `sync_interval_ms` and puts a new version in force through the same path (validated as an
//! admin body, built into a snapshot, persisted, audited as `network-sync` by `cluster:<node>`).
//!
//! Redis down: changes are refused (503), every node keeps the lists it has (and persisted, so
//! a restart keeps them too). A document that does not validate is refused and logged once; the
//! lists in force stay. A Redis without the document (fresh, or restarted without persistence)
//! gets this node's lists back if an admin change was ever persisted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::lists::{self, NetworkLists};
use super::{ChangeError, Control};
use crate::config::Config;
use crate::state::redis::doc::{Fetched, SharedDoc};
use crate::state::redis::{Redis, RedisFault, StoreHealth};

/// The shared network lists and what this node applied of them.
pub struct SharedLists {
    doc: SharedDoc,
    node: String,
    /// The document tag in force here; `None` before the first one.
    applied: std::sync::Mutex<Option<String>>,
    healthy: AtomicBool,
    /// The tag of a document refused as invalid (logged once).
    refused: std::sync::Mutex<Option<String>>,
}

impl SharedLists {
    pub fn new(redis: Arc<Redis>, node: String) -> SharedLists {
        SharedLists {
            doc: SharedDoc::new(redis, "network"),
            node,
            applied: std::sync::Mutex::new(None),
            healthy: AtomicBool::new(true),
            refused: std::sync::Mutex::new(None),
        }
    }

    fn applied(&self) -> Option<String> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_applied(&self, tag: String) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(tag);
    }

    fn mark(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was && !healthy {
            tracing::warn!(
                "network lists: Redis does not answer; the lists in force stay, changes are refused"
            );
        } else if !was && healthy {
            tracing::info!("network lists: synced with Redis again");
        }
    }

    /// Publish `next` as the version after the one applied here.
    pub(super) async fn publish(&self, next: &NetworkLists) -> Result<(), ChangeError> {
        let expected = self.applied();
        let body = next.to_json();
        match self
            .doc
            .publish(expected.as_deref(), body.as_bytes(), &self.node)
            .await
        {
            Err(fault) => {
                self.mark(false);
                Err(ChangeError::Shared(fault))
            }
            Ok(Err(_)) => {
                self.mark(true);
                Err(ChangeError::Conflict)
            }
            Ok(Ok(tag)) => {
                self.mark(true);
                self.set_applied(tag);
                Ok(())
            }
        }
    }

    /// `ok`, or `degraded` while Redis does not answer.
    pub fn health(&self) -> StoreHealth {
        if self.healthy.load(Ordering::Relaxed) {
            StoreHealth::ok("network_lists")
        } else {
            StoreHealth::degraded("network_lists", "lists in force here; changes refused")
        }
    }
}

impl Control {
    /// Follow the shared network lists (once, at start, with `[redis]`).
    pub fn share_lists(&self, shared: SharedLists) {
        if self.shared_lists.set(shared).is_err() {
            tracing::warn!("shared network lists were set up twice; the first stays");
        }
    }

    /// A fingerprint of the configuration in force (file config and network lists; secrets
    /// appear only redacted): equal on nodes that run the same, for `GET /admin/cluster`.
    pub async fn config_fingerprint(&self) -> String {
        let text = format!("{:?}", *self.current.lock().await);
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        hex::encode(&digest.as_ref()[..8])
    }

    pub fn shared_lists(&self) -> Option<&SharedLists> {
        self.shared_lists.get()
    }

    /// Put a version published elsewhere in force (the sync task calls this every
    /// `sync_interval_ms`).
    pub async fn sync_shared_lists(&self) -> Result<(), ChangeError> {
        let Some(shared) = self.shared_lists.get() else {
            return Ok(());
        };
        let mut current = self.current.lock().await;
        self.pull_shared(&mut current, shared).await
    }

    pub(super) async fn pull_shared(
        &self,
        current: &mut Config,
        shared: &SharedLists,
    ) -> Result<(), ChangeError> {
        let known = shared.applied();
        let fetched = match shared.doc.fetch(known.as_deref()).await {
            Ok(fetched) => fetched,
            Err(fault) => {
                shared.mark(false);
                return Err(ChangeError::Shared(fault));
            }
        };
        shared.mark(true);
        match fetched {
            Fetched::Same => Ok(()),
            Fetched::Missing => {
                let state_dir = current.admin.state_dir.clone();
                let persisted =
                    tokio::task::spawn_blocking(move || lists::load_state(&state_dir)).await;
                if let Ok(Ok(Some(_))) = persisted {
                    // Lists an admin set are in force here and Redis has none (fresh, or it
                    // lost them): they become the shared version.
                    match shared.publish(&NetworkLists::from_config(current)).await {
                        Ok(()) => tracing::info!(
                            "network lists: published this node's lists to an empty Redis"
                        ),
                        Err(ChangeError::Conflict) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Fetched::Changed { tag, body, from } => {
                let next = match NetworkLists::from_json(&body) {
                    Ok(next) => next,
                    Err(e) => {
                        let mut refused = shared.refused.lock().unwrap_or_else(|e| e.into_inner());
                        if refused.as_deref() != Some(tag.as_str()) {
                            tracing::error!(
                                error = %e,
                                from,
                                "network lists in Redis do not validate; the lists in force stay"
                            );
                            *refused = Some(tag);
                        }
                        return Err(ChangeError::Shared(RedisFault::BadReply(
                            "network lists that do not validate",
                        )));
                    }
                };
                let before = NetworkLists::from_config(current);
                let mut next = next;
                next.normalize();
                for name in current.sources.keys() {
                    next.sources.entry(name.clone()).or_default();
                }
                self.put_lists(current, next.clone(), None).await?;
                shared.set_applied(tag);
                let who = format!("cluster:{from}");
                self.pipeline
                    .audit()
                    .admin_change(&who, "network-sync", &before.diff(&next));
                tracing::info!(
                    from,
                    "network lists changed on another node are in force here"
                );
                Ok(())
            }
        }
    }
}
