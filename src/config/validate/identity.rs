//! `[identity]`, `[roles]`, `[projects]` and the admin credential/state keys (a child of
//! `validate/mod.rs`, so it shares the [`Checker`]). Key material is resolved and parsed here, so a
//! bad PEM or a short secret is a config error with its position, never a startup surprise.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawIdentity, RawJwks, RawKey, RawProject, RawRole};
use super::super::{
    IdentityConfig, JwksConfig, KeyAlg, KeyConfig, KeyMaterial, KeyRef, ProjectConfig, RoleConfig,
    SourceConfig, default_roles,
};
use super::{Checker, SecretRef, dotted, secret_reference};
use crate::scope::Scope;

impl Checker<'_> {
    /// `[identity]`: `Some(None)` when absent (every object request is then 401).
    pub(super) fn identity(
        &mut self,
        raw: Option<&Spanned<RawIdentity>>,
    ) -> Option<Option<IdentityConfig>> {
        let Some(raw) = raw else { return Some(None) };
        let span = raw.span();
        let raw = raw.get_ref();
        let before = self.errors.len();
        let audience = match &raw.audience {
            None => {
                self.push(
                    span.clone(),
                    "identity.audience",
                    "required key is missing; add `audience = \"bucketgate\"` (tokens' `aud` \
                     claim must contain it)",
                );
                None
            }
            Some(a) if a.get_ref().trim().is_empty() => {
                self.push(
                    a.span(),
                    "identity.audience",
                    "is empty; write the audience tokens carry",
                );
                None
            }
            Some(a) => Some(a.get_ref().clone()),
        };
        let issuer = match &raw.issuer {
            Some(i) if i.get_ref().trim().is_empty() => {
                self.push(
                    i.span(),
                    "identity.issuer",
                    "is empty; write the issuer tokens carry, or remove the key",
                );
                None
            }
            other => Some(other.as_ref().map(|i| i.get_ref().clone())),
        };
        let skew = self.bounded_u64(
            raw.clock_skew_secs.as_ref(),
            "identity.clock_skew_secs",
            d::CLOCK_SKEW_SECS,
            0,
            d::CLOCK_SKEW_SECS_MAX,
        );
        let use_window_max = self.bounded_u64(
            raw.use_window_max_secs.as_ref(),
            "identity.use_window_max_secs",
            d::USE_WINDOW_MAX_SECS,
            d::USE_WINDOW_MAX_SECS_MIN,
            d::USE_WINDOW_MAX_SECS_MAX,
        );
        let cookie_name = match &raw.cookie_name {
            None => Some(d::SESSION_COOKIE_NAME.to_owned()),
            Some(c) if is_cookie_name(c.get_ref()) => Some(c.get_ref().clone()),
            Some(c) => {
                self.push(
                    c.span(),
                    "identity.cookie_name",
                    "is not a valid cookie name; use letters, digits, `_` and `-` only",
                );
                None
            }
        };
        let keys = self.keys(raw.keys.as_ref());
        let jwks = match &raw.jwks {
            None => Some(None),
            Some(j) => self.jwks(j.get_ref()).map(Some),
        };
        if let (Some(keys), Some(None)) = (&keys, &jwks)
            && keys.is_empty()
        {
            self.push(
                span,
                "identity",
                "no keys are configured; add a [[identity.keys]] table or an [identity.jwks] url",
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(Some(IdentityConfig {
            audience: audience?,
            issuer: issuer?,
            clock_skew: Duration::from_secs(skew),
            cookie_name: cookie_name?,
            keys: keys?,
            jwks: jwks?,
            use_window_max: Duration::from_secs(use_window_max),
        }))
    }

    fn keys(&mut self, raw: Option<&Spanned<Vec<Spanned<RawKey>>>>) -> Option<Vec<KeyConfig>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut keys = Vec::new();
        for (i, key) in raw.get_ref().iter().enumerate() {
            let prefix = format!("identity.keys[{i}]");
            if let Some(kid) = &key.get_ref().kid
                && !seen.insert(kid.get_ref().clone())
            {
                self.push(
                    kid.span(),
                    format!("{prefix}.kid"),
                    format!(
                        "kid `{}` is used by another key; every key needs its own kid",
                        kid.get_ref()
                    ),
                );
            }
            if let Some(k) = self.key(&prefix, key.span(), key.get_ref()) {
                keys.push(k);
            }
        }
        (self.errors.len() == before).then_some(keys)
    }

    fn key(&mut self, prefix: &str, span: Range<usize>, raw: &RawKey) -> Option<KeyConfig> {
        let kid = match &raw.kid {
            None => {
                self.push(
                    span.clone(),
                    format!("{prefix}.kid"),
                    "required key is missing; add `kid = \"2026-11\"` (tokens name their key \
                     with the `kid` header)",
                );
                None
            }
            Some(k) if !is_kid(k.get_ref()) => {
                self.push(
                    k.span(),
                    format!("{prefix}.kid"),
                    "a kid is 1 to 128 printable ASCII characters without spaces",
                );
                None
            }
            Some(k) => Some(k.get_ref().clone()),
        };
        let alg = match &raw.alg {
            None => {
                self.push(
                    span.clone(),
                    format!("{prefix}.alg"),
                    "required key is missing; add `alg = \"HS256\"`, `\"EdDSA\"` or `\"ES256\"`",
                );
                None
            }
            Some(a) => match a.get_ref().as_str() {
                "HS256" => Some(KeyAlg::Hs256),
                "EdDSA" => Some(KeyAlg::EdDsa),
                "ES256" => Some(KeyAlg::Es256),
                other => {
                    self.push(
                        a.span(),
                        format!("{prefix}.alg"),
                        format!(
                            "`{other}` is not supported; use \"HS256\", \"EdDSA\" or \"ES256\" \
                             (spelled exactly so)"
                        ),
                    );
                    None
                }
            },
        };
        let material = match alg {
            None => None,
            Some(KeyAlg::Hs256) => self.hs256_material(prefix, span.clone(), raw),
            Some(alg) => self.public_material(prefix, span.clone(), raw, alg),
        };
        let private_key = match &raw.private_key {
            None => Some(None),
            Some(p) => match secret_reference(p.get_ref()) {
                Ok(SecretRef::Env(name)) => Some(Some(KeyRef::Env(name.to_owned()))),
                Ok(SecretRef::File(path)) => Some(Some(KeyRef::File(self.base_dir.join(path)))),
                Err(fix) => {
                    self.push(p.span(), format!("{prefix}.private_key"), fix);
                    None
                }
            },
        };
        let allow_non_expiring = raw
            .allow_non_expiring
            .as_ref()
            .is_some_and(|a| *a.get_ref());
        Some(KeyConfig {
            kid: kid?,
            alg: alg?,
            material: material?,
            private_key: private_key?,
            allow_non_expiring,
        })
    }

    fn hs256_material(
        &mut self,
        prefix: &str,
        span: Range<usize>,
        raw: &RawKey,
    ) -> Option<KeyMaterial> {
        if let Some(p) = &raw.public_key {
            self.push(
                p.span(),
                format!("{prefix}.public_key"),
                "HS256 keys have no public key; remove `public_key` and set `secret`",
            );
            return None;
        }
        let Some(secret) = &raw.secret else {
            self.push(
                span,
                format!("{prefix}.secret"),
                "required key is missing for alg = \"HS256\"; add `secret = \"env:NAME\"` or \
                 `\"file:PATH\"`",
            );
            return None;
        };
        let value = self.secret(secret, &format!("{prefix}.secret"))?;
        if value.expose().len() < d::HS256_MIN_SECRET_BYTES {
            self.push(
                secret.span(),
                format!("{prefix}.secret"),
                format!(
                    "the secret is shorter than {} bytes; use a long random value, e.g. the \
                     output of `bucketgate keygen --alg HS256`",
                    d::HS256_MIN_SECRET_BYTES
                ),
            );
            return None;
        }
        Some(KeyMaterial::Hs256(value))
    }

    fn public_material(
        &mut self,
        prefix: &str,
        span: Range<usize>,
        raw: &RawKey,
        alg: KeyAlg,
    ) -> Option<KeyMaterial> {
        if let Some(s) = &raw.secret {
            self.push(
                s.span(),
                format!("{prefix}.secret"),
                format!(
                    "`secret` is only for alg = \"HS256\"; a {} key needs `public_key`",
                    alg.as_str()
                ),
            );
            return None;
        }
        let Some(public) = &raw.public_key else {
            self.push(
                span,
                format!("{prefix}.public_key"),
                format!(
                    "required key is missing for alg = \"{}\"; add `public_key = \
                     \"file:keys/public.pem\"` (a PEM public key)",
                    alg.as_str()
                ),
            );
            return None;
        };
        let pem = self.secret(public, &format!("{prefix}.public_key"))?;
        if let Err(e) = KeyMaterial::PublicPem(pem.expose().to_owned()).decoding_key(alg) {
            self.push(
                public.span(),
                format!("{prefix}.public_key"),
                format!(
                    "is not a PEM {} public key ({e}); write the `-----BEGIN PUBLIC KEY-----` \
                     block of the key pair",
                    alg.as_str()
                ),
            );
            return None;
        }
        Some(KeyMaterial::PublicPem(pem.expose().to_owned()))
    }

    fn jwks(&mut self, raw: &RawJwks) -> Option<JwksConfig> {
        let before = self.errors.len();
        let url = match &raw.url {
            None => {
                self.push(
                    0..0,
                    "identity.jwks.url",
                    "required key is missing; add `url = \"https://idp.example.com/jwks.json\"`",
                );
                None
            }
            Some(u) => match u.get_ref().parse::<http::Uri>() {
                Ok(uri)
                    if uri.scheme_str() == Some("https")
                        && uri.host().is_some_and(|h| !h.is_empty())
                        && !uri.authority().is_some_and(|a| a.as_str().contains('@')) =>
                {
                    Some(uri)
                }
                _ => {
                    self.push(
                        u.span(),
                        "identity.jwks.url",
                        "must be an https:// URL with a host and no user info, e.g. \
                         \"https://idp.example.com/.well-known/jwks.json\"",
                    );
                    None
                }
            },
        };
        let ca_file = match &raw.ca_file {
            None => Some(None),
            Some(f) => self.existing_file(f, "identity.jwks.ca_file").map(Some),
        };
        let interval = self.bounded_u64(
            raw.refresh_min_interval_secs.as_ref(),
            "identity.jwks.refresh_min_interval_secs",
            d::JWKS_REFRESH_MIN_INTERVAL_SECS,
            1,
            d::JWKS_REFRESH_MIN_INTERVAL_SECS_MAX,
        );
        if self.errors.len() != before {
            return None;
        }
        Some(JwksConfig {
            url: url?,
            ca_file: ca_file?,
            refresh_min_interval: Duration::from_secs(interval),
        })
    }

    /// An integer in `min..=max`, or `default`; out of range pushes an error and yields the default.
    fn bounded_u64(
        &mut self,
        raw: Option<&Spanned<i64>>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(raw) = raw else { return default };
        match u64::try_from(*raw.get_ref()) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.push(
                    raw.span(),
                    key,
                    format!(
                        "{} is out of range; set a value from {min} to {max}, or remove the key \
                         to use the default {default}",
                        raw.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// `[roles.NAME]` over the seed roles. A configured role replaces the seed of the same name;
    /// `labeler` follows `annotator` unless configured itself.
    pub(super) fn roles(
        &mut self,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawRole>>>>,
    ) -> Option<BTreeMap<String, RoleConfig>> {
        let mut roles = default_roles();
        let Some(raw) = raw else { return Some(roles) };
        let before = self.errors.len();
        let mut labeler_set = false;
        for (name, role) in raw.get_ref() {
            if !is_name(name.get_ref()) {
                self.push(
                    name.span(),
                    dotted(&["roles", name.get_ref().as_str()]),
                    "a role name is 1 to 63 lowercase letters, digits, `_` or `-`",
                );
                continue;
            }
            let seed = roles.get(name.get_ref()).copied().unwrap_or(RoleConfig {
                read_original: false,
                read_derived: false,
                rank: None,
            });
            let r = role.get_ref();
            let rank = match &r.rank {
                None => seed.rank,
                Some(rank) => {
                    let value = *rank.get_ref();
                    let ok = u64::try_from(value)
                        .ok()
                        .filter(|v| *v <= d::ROLE_RANK_MAX)
                        .and_then(|v| u32::try_from(v).ok());
                    if ok.is_none() {
                        self.push(
                            rank.span(),
                            dotted(&["roles", name.get_ref().as_str(), "rank"]),
                            format!(
                                "{value} is out of range; set a rank from 0 to {} (higher is \
                                 more powerful; the seeds: owner 50, admin 40, manager 30, \
                                 reviewer 20, annotator 10)",
                                d::ROLE_RANK_MAX
                            ),
                        );
                    }
                    ok
                }
            };
            let value = RoleConfig {
                read_original: r
                    .read_original
                    .as_ref()
                    .map_or(seed.read_original, |v| *v.get_ref()),
                read_derived: r
                    .read_derived
                    .as_ref()
                    .map_or(seed.read_derived, |v| *v.get_ref()),
                rank,
            };
            labeler_set |= name.get_ref() == "labeler";
            roles.insert(name.get_ref().clone(), value);
        }
        if !labeler_set && let Some(annotator) = roles.get("annotator").copied() {
            roles.insert("labeler".to_owned(), annotator);
        }
        (self.errors.len() == before).then_some(roles)
    }

    /// `[projects.NAME]`: each `sources` entry is a scope on a configured source.
    pub(super) fn projects(
        &mut self,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawProject>>>>,
        sources: Option<&BTreeMap<String, SourceConfig>>,
    ) -> Option<BTreeMap<String, ProjectConfig>> {
        let mut projects = BTreeMap::new();
        let Some(raw) = raw else {
            return Some(projects);
        };
        let before = self.errors.len();
        for (name, project) in raw.get_ref() {
            let key = dotted(&["projects", name.get_ref().as_str()]);
            if !is_name(name.get_ref()) {
                self.push(
                    name.span(),
                    key.clone(),
                    "a project name is 1 to 63 lowercase letters, digits, `_` or `-`",
                );
                continue;
            }
            let Some(list) = &project.get_ref().sources else {
                self.push(
                    project.span(),
                    format!("{key}.sources"),
                    "required key is missing; add `sources = [\"local:\", \"photos:team-a/\"]`",
                );
                continue;
            };
            if list.get_ref().is_empty() {
                self.push(
                    list.span(),
                    format!("{key}.sources"),
                    "is empty; list at least one `source:prefix/` or `source:exact/key`",
                );
                continue;
            }
            let mut scopes = Vec::new();
            for entry in list.get_ref() {
                match Scope::parse(entry.get_ref()) {
                    Ok(scope) => {
                        if let Some(sources) = sources
                            && !sources.contains_key(scope.source())
                        {
                            self.push(
                                entry.span(),
                                format!("{key}.sources"),
                                format!(
                                    "source `{}` is not configured; add [sources.{}] or fix \
                                     the name",
                                    scope.source(),
                                    scope.source()
                                ),
                            );
                        }
                        scopes.push(scope);
                    }
                    Err(e) => self.push(
                        entry.span(),
                        format!("{key}.sources"),
                        format!(
                            "`{}` {e}; write `source:` (the whole source), `source:prefix/` \
                             (ends with `/`) or `source:exact/key`",
                            entry.get_ref()
                        ),
                    ),
                }
            }
            projects.insert(name.get_ref().clone(), ProjectConfig { sources: scopes });
        }
        (self.errors.len() == before).then_some(projects)
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 128 && kid.bytes().all(|b| b.is_ascii_graphic())
}

/// RFC 6265 token characters, narrowed to the common safe set.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
