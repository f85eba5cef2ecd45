//! The network lists an admin can change at run time, as JSON (the admin API's bodies and the
//! persisted `<state_dir>/network.json`), and the atomic write of that file.
//!
//! Every entry is checked with [`crate::config::network::parse_cidr`], the function config
//! validation uses, so the API accepts exactly what the config file accepts.
//!
//! Precedence: a persisted `network.json` replaces the config file's global lists, and the
//! per-source lists of every source it names (it names every source that existed when it was
//! written). A source added to the config later keeps its config-file lists.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::network::{CidrError, parse_cidr};
use crate::config::{Config, NetworkConfig, SourceLists};

/// File name of the persisted lists inside `[admin] state_dir`.
pub const STATE_FILE: &str = "network.json";

/// The lists in force, global and per source. Entries are validated and in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkLists {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub sources: BTreeMap<String, SourceLists>,
}

/// A list body or file that cannot be applied. `Display` is shown to the admin: it names the
/// bad entry and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ListsError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{at}: {error}")]
    Entry { at: String, error: CidrError },
    #[error("sources.{0}: no such source in the config")]
    UnknownSource(String),
    #[error("{at}: `{entry}` is not in the list")]
    NotInList { at: String, entry: IpNet },
    #[error("add.trusted_proxies / remove.trusted_proxies are global; remove `source`")]
    TrustedProxiesPerSource,
}

// ---- wire format ----

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLists {
    allow: Vec<String>,
    deny: Vec<String>,
    trusted_proxies: Vec<String>,
    #[serde(default)]
    sources: BTreeMap<String, WireSource>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSource {
    /// Absent or `null`: the source does not narrow the global allow list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
}

/// `PATCH /admin/network`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePatch {
    #[serde(default)]
    add: WireDelta,
    #[serde(default)]
    remove: WireDelta,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDelta {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

fn parse_list(entries: &[String], at: &str) -> Result<Vec<IpNet>, ListsError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            parse_cidr(e).map_err(|error| ListsError::Entry {
                at: format!("{at}[{i}]"),
                error,
            })
        })
        .collect()
}

fn strings(list: &[IpNet]) -> Vec<String> {
    list.iter().map(IpNet::to_string).collect()
}

fn dedup(list: &mut Vec<IpNet>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|n| seen.insert(*n));
}

/// One PATCH: what to add and remove, globally or for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub source: Option<String>,
    pub add_allow: Vec<IpNet>,
    pub add_deny: Vec<IpNet>,
    pub add_trusted: Vec<IpNet>,
    pub remove_allow: Vec<IpNet>,
    pub remove_deny: Vec<IpNet>,
    pub remove_trusted: Vec<IpNet>,
}

impl Patch {
    pub fn from_json(body: &[u8]) -> Result<Patch, ListsError> {
        let wire: WirePatch = serde_json::from_slice(body)?;
        let patch = Patch {
            add_allow: parse_list(&wire.add.allow, "add.allow")?,
            add_deny: parse_list(&wire.add.deny, "add.deny")?,
            add_trusted: parse_list(&wire.add.trusted_proxies, "add.trusted_proxies")?,
            remove_allow: parse_list(&wire.remove.allow, "remove.allow")?,
            remove_deny: parse_list(&wire.remove.deny, "remove.deny")?,
            remove_trusted: parse_list(&wire.remove.trusted_proxies, "remove.trusted_proxies")?,
            source: wire.source,
        };
        if patch.source.is_some()
            && (!patch.add_trusted.is_empty() || !patch.remove_trusted.is_empty())
        {
            return Err(ListsError::TrustedProxiesPerSource);
        }
        Ok(patch)
    }
}

impl NetworkLists {
    /// The lists of a validated config.
    pub fn from_config(config: &Config) -> NetworkLists {
        let n = &config.network;
        NetworkLists {
            allow: n.allow.clone(),
            deny: n.deny.clone(),
            trusted_proxies: n.trusted_proxies.clone(),
            sources: n.sources.clone(),
        }
    }

    /// Parse and validate JSON (a PUT body or the state file).
    pub fn from_json(body: &[u8]) -> Result<NetworkLists, ListsError> {
        let wire: WireLists = serde_json::from_slice(body)?;
        let mut sources = BTreeMap::new();
        for (name, s) in &wire.sources {
            let at = format!("sources.{name}");
            let allow = match &s.allow {
                Some(list) => Some(parse_list(list, &format!("{at}.allow"))?),
                None => None,
            };
            let deny = parse_list(&s.deny, &format!("{at}.deny"))?;
            sources.insert(name.clone(), SourceLists { allow, deny });
        }
        Ok(NetworkLists {
            allow: parse_list(&wire.allow, "allow")?,
            deny: parse_list(&wire.deny, "deny")?,
            trusted_proxies: parse_list(&wire.trusted_proxies, "trusted_proxies")?,
            sources,
        })
    }

    pub fn to_json(&self) -> String {
        let wire = WireLists {
            allow: strings(&self.allow),
            deny: strings(&self.deny),
            trusted_proxies: strings(&self.trusted_proxies),
            sources: self
                .sources
                .iter()
                .map(|(name, s)| {
                    let source = WireSource {
                        allow: s.allow.as_deref().map(strings),
                        deny: strings(&s.deny),
                    };
                    (name.clone(), source)
                })
                .collect(),
        };
        // Serializing strings and maps of strings cannot fail.
        serde_json::to_string_pretty(&wire).unwrap_or_default()
    }

    /// Refuse lists naming a source the config does not have (the API's check).
    pub fn check_sources(&self, config: &Config) -> Result<(), ListsError> {
        match self
            .sources
            .keys()
            .find(|name| !config.sources.contains_key(*name))
        {
            Some(name) => Err(ListsError::UnknownSource(name.clone())),
            None => Ok(()),
        }
    }

    /// These lists with `patch` applied. Adding an entry already present is a no-op; removing
    /// one that is absent is refused (a typo should not look like success).
    pub fn patched(&self, patch: &Patch, config: &Config) -> Result<NetworkLists, ListsError> {
        let mut next = self.clone();
        fn remove(list: &mut Vec<IpNet>, entries: &[IpNet], at: &str) -> Result<(), ListsError> {
            for entry in entries {
                let before = list.len();
                list.retain(|n| n != entry);
                if list.len() == before {
                    return Err(ListsError::NotInList {
                        at: at.to_owned(),
                        entry: *entry,
                    });
                }
            }
            Ok(())
        }
        match &patch.source {
            None => {
                remove(&mut next.allow, &patch.remove_allow, "remove.allow")?;
                remove(&mut next.deny, &patch.remove_deny, "remove.deny")?;
                remove(
                    &mut next.trusted_proxies,
                    &patch.remove_trusted,
                    "remove.trusted_proxies",
                )?;
                next.allow.extend(&patch.add_allow);
                next.deny.extend(&patch.add_deny);
                next.trusted_proxies.extend(&patch.add_trusted);
            }
            Some(name) => {
                if !config.sources.contains_key(name) {
                    return Err(ListsError::UnknownSource(name.clone()));
                }
                let lists = next.sources.entry(name.clone()).or_default();
                if !patch.remove_allow.is_empty() {
                    let allow = lists.allow.get_or_insert_with(Vec::new);
                    remove(allow, &patch.remove_allow, "remove.allow")?;
                }
                remove(&mut lists.deny, &patch.remove_deny, "remove.deny")?;
                if !patch.add_allow.is_empty() {
                    lists
                        .allow
                        .get_or_insert_with(Vec::new)
                        .extend(&patch.add_allow);
                }
                lists.deny.extend(&patch.add_deny);
            }
        }
        next.normalize();
        Ok(next)
    }

    /// Drop duplicate entries (first one wins, order kept).
    pub fn normalize(&mut self) {
        dedup(&mut self.allow);
        dedup(&mut self.deny);
        dedup(&mut self.trusted_proxies);
        for s in self.sources.values_mut() {
            if let Some(allow) = &mut s.allow {
                dedup(allow);
            }
            dedup(&mut s.deny);
        }
    }

    /// `config` with these lists in force (see the module doc for precedence). Sources these
    /// lists name that the config no longer has are skipped and returned.
    pub fn apply_to(&self, config: &mut Config) -> Vec<String> {
        let network: &mut NetworkConfig = &mut config.network;
        network.allow = self.allow.clone();
        network.deny = self.deny.clone();
        network.trusted_proxies = self.trusted_proxies.clone();
        let mut unknown = Vec::new();
        for (name, lists) in &self.sources {
            if config.sources.contains_key(name) {
                network.sources.insert(name.clone(), lists.clone());
            } else {
                unknown.push(name.clone());
            }
        }
        unknown
    }

    /// What changed from `self` to `next`, for the audit record: per list, entries added and
    /// removed.
    pub fn diff(&self, next: &NetworkLists) -> serde_json::Value {
        fn delta(
            at: &str,
            a: &[IpNet],
            b: &[IpNet],
            out: &mut serde_json::Map<String, serde_json::Value>,
        ) {
            let added: Vec<String> = b
                .iter()
                .filter(|n| !a.contains(n))
                .map(IpNet::to_string)
                .collect();
            let removed: Vec<String> = a
                .iter()
                .filter(|n| !b.contains(n))
                .map(IpNet::to_string)
                .collect();
            if !added.is_empty() || !removed.is_empty() {
                out.insert(
                    at.to_owned(),
                    serde_json::json!({ "added": added, "removed": removed }),
                );
            }
        }
        let mut out = serde_json::Map::new();
        delta("allow", &self.allow, &next.allow, &mut out);
        delta("deny", &self.deny, &next.deny, &mut out);
        delta(
            "trusted_proxies",
            &self.trusted_proxies,
            &next.trusted_proxies,
            &mut out,
        );
        let empty = SourceLists::default();
        let names: std::collections::BTreeSet<&String> =
            self.sources.keys().chain(next.sources.keys()).collect();
        for name in names {
            let a = self.sources.get(name).unwrap_or(&empty);
            let b = next.sources.get(name).unwrap_or(&empty);
            if a.allow.is_some() != b.allow.is_some() {
                out.insert(
                    format!("sources.{name}.allow_narrows"),
                    serde_json::Value::Bool(b.allow.is_some()),
                );
            }
            delta(
                &format!("sources.{name}.allow"),
                a.allow.as_deref().unwrap_or_default(),
                b.allow.as_deref().unwrap_or_default(),
                &mut out,
            );
            delta(&format!("sources.{name}.deny"), &a.deny, &b.deny, &mut out);
        }
        serde_json::Value::Object(out)
    }
}

/// Reading or writing the persisted state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is invalid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ListsError,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The persisted lists under `state_dir`, or `None` if there are none.
pub fn load_state(state_dir: &Path) -> Result<Option<NetworkLists>, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    NetworkLists::from_json(&bytes)
        .map(Some)
        .map_err(|source| StateError::Invalid { path, source })
}

/// Write `lists` to `<state_dir>/network.json` so that a crash at any point leaves either the
/// old file or the new one: write a temp file in the same directory, fsync it, rename it over
/// the old one, fsync the directory.
pub fn store_state(state_dir: &Path, lists: &NetworkLists) -> Result<(), StateError> {
    let path = state_dir.join(STATE_FILE);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".network.json.")
            .suffix(".tmp")
            .tempfile_in(state_dir)?;
        tmp.write_all(lists.to_json().as_bytes())?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        #[cfg(unix)]
        std::fs::File::open(state_dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(|source| StateError::Write { path, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn json_round_trips_and_keeps_no_narrowing_apart_from_nobody() {
        let body = br#"{"allow":["10.0.0.0/8","::1"],"deny":[],"trusted_proxies":["192.0.2.1"],
            "sources":{"a":{"deny":["10.1.0.0/16"]},"b":{"allow":[]}}}"#;
        let lists = NetworkLists::from_json(body).unwrap();
        assert_eq!(lists.allow, vec![net("10.0.0.0/8"), net("::1/128")]);
        assert_eq!(lists.sources["a"].allow, None);
        assert_eq!(lists.sources["b"].allow, Some(vec![]));
        let again = NetworkLists::from_json(lists.to_json().as_bytes()).unwrap();
        assert_eq!(again, lists);
    }

    #[test]
    fn a_bad_entry_is_named_by_its_position() {
        let body = br#"{"allow":["10.0.0.0/8","10.0.0.1/8"],"deny":[],"trusted_proxies":[]}"#;
        let err = NetworkLists::from_json(body).unwrap_err().to_string();
        assert!(err.starts_with("allow[1]: "), "{err}");
        assert!(err.contains("10.0.0.1/8"), "{err}");
    }

    #[test]
    fn unknown_keys_and_missing_lists_are_refused() {
        assert!(
            NetworkLists::from_json(br#"{"allow":[],"deny":[],"trusted_proxies":[],"alow":[]}"#)
                .is_err()
        );
        assert!(NetworkLists::from_json(br#"{"allow":[]}"#).is_err());
    }

    #[test]
    fn removing_an_absent_entry_is_refused_and_adding_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::app::embedded_config(dir.path()).unwrap();
        let lists = NetworkLists::from_config(&config);
        let patch = Patch::from_json(br#"{"remove":{"deny":["10.0.0.0/8"]}}"#).unwrap();
        assert!(matches!(
            lists.patched(&patch, &config),
            Err(ListsError::NotInList { .. })
        ));
        let patch =
            Patch::from_json(br#"{"add":{"allow":["127.0.0.0/8","127.0.0.0/8"]}}"#).unwrap();
        assert_eq!(lists.patched(&patch, &config).unwrap().allow, lists.allow);
    }

    #[test]
    fn store_replaces_the_file_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut lists = NetworkLists::default();
        for n in 0..5u8 {
            lists
                .allow
                .push(IpNet::from(std::net::IpAddr::from([10, n, 0, 0])));
            store_state(&state, &lists).unwrap();
            assert_eq!(load_state(&state).unwrap(), Some(lists.clone()));
        }
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }
}
