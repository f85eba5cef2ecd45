//! `[saml]`, `[saml.idp]` and `[[saml.idp.roles]]` (a child of `validate/mod.rs`, so it shares the
//! [`Checker`]). Certificates are resolved and their PEM read here, so a missing or wrong file is
//! a config error with its position, never a login that fails at 3 a.m.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawSaml, RawSamlIdp, RawSamlRole};
use super::super::{
    ProjectConfig, RoleChoice, RoleConfig, SamlConfig, SamlIdpConfig, SamlRoleRule, Secret,
};
use super::Checker;

/// The one ACS path the data listener serves.
pub const ACS_PATH: &str = "/auth/saml/acs";
/// Longest entity id accepted.
const MAX_ENTITY_ID_BYTES: usize = 1024;

impl Checker<'_> {
    /// `[saml]`: `Some(None)` when absent. `roles` and `projects` are the validated tables
    /// (`None` when they had errors of their own: the references are then not checked).
    pub(super) fn saml(
        &mut self,
        raw: Option<&Spanned<RawSaml>>,
        roles: Option<&BTreeMap<String, RoleConfig>>,
        projects: Option<&BTreeMap<String, ProjectConfig>>,
    ) -> Option<Option<SamlConfig>> {
        let Some(raw) = raw else { return Some(None) };
        let span = raw.span();
        let raw = raw.get_ref();
        let before = self.errors.len();
        let sp_entity_id = self.entity_id(
            raw.sp_entity_id.as_ref(),
            span.clone(),
            "saml.sp_entity_id",
            "\"https://assets.example.com/saml\" (this gateway's SAML entity id, given to the IdP)",
        );
        let acs_url = self.acs_url(raw.acs_url.as_ref(), span.clone());
        let max_session = self.bounded(
            &raw.max_session_secs,
            "saml.max_session_secs",
            d::SAML_MAX_SESSION_SECS,
            d::SAML_MAX_SESSION_SECS_MIN,
            d::SAML_MAX_SESSION_SECS_MAX,
        );
        let max_response_age = self.bounded(
            &raw.max_response_age_secs,
            "saml.max_response_age_secs",
            d::SAML_MAX_RESPONSE_AGE_SECS,
            d::SAML_MAX_RESPONSE_AGE_SECS_MIN,
            d::SAML_MAX_RESPONSE_AGE_SECS_MAX,
        );
        let login_cookie_key = raw
            .login_cookie_key
            .as_ref()
            .map(|key| self.login_cookie_key(key));
        let idp = match &raw.idp {
            Some(idp) => self.saml_idp(idp.span(), idp.get_ref(), roles, projects),
            None => {
                self.push(
                    span,
                    "saml.idp",
                    "required table is missing; add [saml.idp] with entity_id, sso_url, \
                     certificates and at least one [[saml.idp.roles]] (see config.toml.example)",
                );
                None
            }
        };
        if self.errors.len() != before {
            return None;
        }
        Some(Some(SamlConfig {
            sp_entity_id: sp_entity_id?,
            acs_url: acs_url?,
            max_session: Duration::from_secs(max_session),
            max_response_age: Duration::from_secs(max_response_age),
            login_cookie_key: login_cookie_key.flatten(),
            idp: idp?,
        }))
    }

    /// `[saml] login_cookie_key`: a secret reference whose value has at least
    /// `SAML_LOGIN_COOKIE_KEY_MIN_BYTES` bytes. The value is never echoed.
    fn login_cookie_key(&mut self, raw: &Spanned<String>) -> Option<Secret> {
        let key = "saml.login_cookie_key";
        let secret = self.secret(raw, key)?;
        let len = secret.expose().len();
        if len < d::SAML_LOGIN_COOKIE_KEY_MIN_BYTES {
            self.push(
                raw.span(),
                key,
                format!(
                    "the key has {len} bytes; it needs at least {} (e.g. the output of \
                     `openssl rand -hex 32`), the same on every node",
                    d::SAML_LOGIN_COOKIE_KEY_MIN_BYTES
                ),
            );
            return None;
        }
        Some(secret)
    }

    fn saml_idp(
        &mut self,
        span: Range<usize>,
        raw: &RawSamlIdp,
        roles: Option<&BTreeMap<String, RoleConfig>>,
        projects: Option<&BTreeMap<String, ProjectConfig>>,
    ) -> Option<SamlIdpConfig> {
        let before = self.errors.len();
        let entity_id = self.entity_id(
            raw.entity_id.as_ref(),
            span.clone(),
            "saml.idp.entity_id",
            "\"https://idp.example.com/metadata\" (the IdP's entity id, the Issuer of its \
             responses)",
        );
        let sso_url = self.sso_url(raw.sso_url.as_ref(), span.clone());
        let certificates = self.certificates(raw.certificates.as_ref(), span.clone());
        let allow_idp_initiated = raw
            .allow_idp_initiated
            .as_ref()
            .is_some_and(|a| *a.get_ref());
        let skew = self.bounded(
            &raw.clock_skew_secs,
            "saml.idp.clock_skew_secs",
            d::SAML_CLOCK_SKEW_SECS,
            0,
            d::SAML_CLOCK_SKEW_SECS_MAX,
        );
        let role_choice = match &raw.role_choice {
            None => Some(RoleChoice::First),
            Some(c) => match c.get_ref().as_str() {
                "first" => Some(RoleChoice::First),
                "only" => Some(RoleChoice::Only),
                "highest" => Some(RoleChoice::Highest),
                other => {
                    self.push(
                        c.span(),
                        "saml.idp.role_choice",
                        format!(
                            "`{other}` is not a role choice; write \"first\" (the first usable \
                             role the response offers), \"only\" (exactly one, several are \
                             refused) or \"highest\" (the most powerful gateway role)"
                        ),
                    );
                    None
                }
            },
        };
        let ranked = role_choice == Some(RoleChoice::Highest);
        let rules = self.saml_roles(raw.roles.as_ref(), span, roles, projects, ranked);
        if self.errors.len() != before {
            return None;
        }
        Some(SamlIdpConfig {
            entity_id: entity_id?,
            sso_url: sso_url?,
            certificates: certificates?,
            allow_idp_initiated,
            clock_skew: Duration::from_secs(skew),
            role_choice: role_choice?,
            roles: rules?,
        })
    }

    fn entity_id(
        &mut self,
        raw: Option<&Spanned<String>>,
        table: Range<usize>,
        key: &str,
        example: &str,
    ) -> Option<String> {
        let Some(raw) = raw else {
            self.push(
                table,
                key,
                format!("required key is missing; add `{} = {example}`", leaf(key)),
            );
            return None;
        };
        let value = raw.get_ref();
        if value.is_empty()
            || value.len() > MAX_ENTITY_ID_BYTES
            || value.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            self.push(
                raw.span(),
                key,
                format!(
                    "an entity id is 1 to {MAX_ENTITY_ID_BYTES} bytes without spaces or control \
                     characters, e.g. {example}"
                ),
            );
            return None;
        }
        Some(value.clone())
    }

    fn acs_url(&mut self, raw: Option<&Spanned<String>>, table: Range<usize>) -> Option<String> {
        let key = "saml.acs_url";
        let Some(raw) = raw else {
            self.push(
                table,
                key,
                format!(
                    "required key is missing; add `acs_url = \"https://assets.example.com{ACS_PATH}\"` \
                     (this gateway's public URL of the assertion consumer service)"
                ),
            );
            return None;
        };
        let ok = parse_url(raw.get_ref()).is_some_and(|u| {
            u.scheme == "https" && u.path == ACS_PATH && u.query.is_none() && !u.fragment
        });
        if !ok {
            self.push(
                raw.span(),
                key,
                format!(
                    "must be the gateway's public https:// URL ending in `{ACS_PATH}`, without \
                     user info, query or fragment, e.g. \"https://assets.example.com{ACS_PATH}\""
                ),
            );
            return None;
        }
        Some(raw.get_ref().clone())
    }

    fn sso_url(&mut self, raw: Option<&Spanned<String>>, table: Range<usize>) -> Option<String> {
        let key = "saml.idp.sso_url";
        let Some(raw) = raw else {
            self.push(
                table,
                key,
                "required key is missing; add `sso_url = \"https://idp.example.com/sso\"` (the \
                 IdP's single sign-on URL for the HTTP-Redirect binding)",
            );
            return None;
        };
        let ok = parse_url(raw.get_ref()).is_some_and(|u| {
            !u.fragment && (u.scheme == "https" || (u.scheme == "http" && is_loopback(&u.host)))
        });
        if !ok {
            self.push(
                raw.span(),
                key,
                "must be an https:// URL with a host and no user info or fragment (http:// only \
                 for a loopback host such as 127.0.0.1, for tests), e.g. \
                 \"https://idp.example.com/sso\"",
            );
            return None;
        }
        Some(raw.get_ref().clone())
    }

    /// Each entry is an `env:`/`file:` reference to PEM text with one or more certificates.
    fn certificates(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        table: Range<usize>,
    ) -> Option<Vec<Vec<u8>>> {
        let key = "saml.idp.certificates";
        let Some(raw) = raw else {
            self.push(
                table,
                key,
                "required key is missing; add `certificates = [\"file:idp-signing.pem\"]` (the \
                 IdP's PEM signing certificate; list two during a rotation)",
            );
            return None;
        };
        if raw.get_ref().is_empty() {
            self.push(
                raw.span(),
                key,
                "is empty; list at least one \"file:PATH\" or \"env:NAME\" holding the IdP's PEM \
                 signing certificate",
            );
            return None;
        }
        let before = self.errors.len();
        let mut ders = Vec::new();
        for entry in raw.get_ref() {
            let Some(pem) = self.secret(entry, key) else {
                continue;
            };
            let pem = pem.expose().as_bytes();
            if contains(pem, b"PRIVATE KEY-----") {
                self.push(
                    entry.span(),
                    key,
                    "the PEM holds a private key; give only the IdP's certificate \
                     (-----BEGIN CERTIFICATE-----), and keep private keys out of the gateway",
                );
                continue;
            }
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                match cert {
                    Ok(cert) if cert.first() == Some(&0x30) => {
                        ders.push(cert.to_vec());
                        found += 1;
                    }
                    _ => {
                        found = 0;
                        break;
                    }
                }
            }
            if found == 0 {
                self.push(
                    entry.span(),
                    key,
                    "holds no readable PEM certificate; write the IdP's signing certificate as a \
                     -----BEGIN CERTIFICATE----- block (from its metadata's <X509Certificate>)",
                );
            }
        }
        (self.errors.len() == before).then_some(ders)
    }

    fn saml_roles(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<RawSamlRole>>>>,
        table: Range<usize>,
        roles: Option<&BTreeMap<String, RoleConfig>>,
        projects: Option<&BTreeMap<String, ProjectConfig>>,
        ranked: bool,
    ) -> Option<Vec<SamlRoleRule>> {
        let missing = "no role rules; add a [[saml.idp.roles]] table with role_arn, provider_arn, \
                       gateway_role and project for each AWS role users may sign in with";
        let Some(raw) = raw else {
            self.push(table, "saml.idp.roles", missing);
            return None;
        };
        if raw.get_ref().is_empty() {
            self.push(raw.span(), "saml.idp.roles", missing);
            return None;
        }
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut rules = Vec::new();
        for (i, rule) in raw.get_ref().iter().enumerate() {
            let prefix = format!("saml.idp.roles[{i}]");
            let span = rule.span();
            let r = rule.get_ref();
            let role_arn = self.arn(
                r.role_arn.as_ref(),
                &span,
                &prefix,
                "role_arn",
                ArnKind::Role,
            );
            let provider_arn = self.arn(
                r.provider_arn.as_ref(),
                &span,
                &prefix,
                "provider_arn",
                ArnKind::SamlProvider,
            );
            let gateway_role = match &r.gateway_role {
                None => {
                    self.push(
                        span.clone(),
                        format!("{prefix}.gateway_role"),
                        "required key is missing; add `gateway_role = \"annotator\"` (owner, \
                         admin, manager, reviewer, annotator, labeler or a [roles.NAME])",
                    );
                    None
                }
                Some(g) if roles.is_some_and(|roles| !roles.contains_key(g.get_ref())) => {
                    self.push(
                        g.span(),
                        format!("{prefix}.gateway_role"),
                        format!(
                            "role `{}` is not configured; use a seed role (owner, admin, \
                             manager, reviewer, annotator, labeler) or add [roles.{}]",
                            g.get_ref(),
                            g.get_ref()
                        ),
                    );
                    None
                }
                Some(g)
                    if ranked
                        && roles.is_some_and(|roles| {
                            roles.get(g.get_ref()).is_some_and(|r| r.rank.is_none())
                        }) =>
                {
                    self.push(
                        g.span(),
                        format!("{prefix}.gateway_role"),
                        format!(
                            "role `{}` has no rank, and role_choice = \"highest\" compares \
                             ranks; add `rank = N` to [roles.{}] (0-{}; the seeds: owner 50, \
                             admin 40, manager 30, reviewer 20, annotator 10)",
                            g.get_ref(),
                            g.get_ref(),
                            d::ROLE_RANK_MAX
                        ),
                    );
                    None
                }
                Some(g) => Some(g.get_ref().clone()),
            };
            let project = match &r.project {
                None => {
                    self.push(
                        span.clone(),
                        format!("{prefix}.project"),
                        "required key is missing; add `project = \"NAME\"` naming a \
                         [projects.NAME] (the sources and prefixes the session may reach)",
                    );
                    None
                }
                Some(p) if projects.is_some_and(|ps| !ps.contains_key(p.get_ref())) => {
                    self.push(
                        p.span(),
                        format!("{prefix}.project"),
                        format!(
                            "project `{}` is not configured; add [projects.{}] with its \
                             sources, or fix the name",
                            p.get_ref(),
                            p.get_ref()
                        ),
                    );
                    None
                }
                Some(p) => Some(p.get_ref().clone()),
            };
            if let (Some(role), Some(provider)) = (&role_arn, &provider_arn)
                && !seen.insert((role.clone(), provider.clone()))
            {
                self.push(
                    span.clone(),
                    prefix.clone(),
                    "this role_arn and provider_arn pair is listed twice; each pair maps to one \
                     gateway role and project, remove one of the tables",
                );
            }
            if let (Some(role_arn), Some(provider_arn), Some(gateway_role), Some(project)) =
                (role_arn, provider_arn, gateway_role, project)
            {
                rules.push(SamlRoleRule {
                    role_arn,
                    provider_arn,
                    gateway_role,
                    project,
                });
            }
        }
        (self.errors.len() == before).then_some(rules)
    }

    fn arn(
        &mut self,
        raw: Option<&Spanned<String>>,
        table: &Range<usize>,
        prefix: &str,
        name: &str,
        kind: ArnKind,
    ) -> Option<String> {
        let key = format!("{prefix}.{name}");
        let example = match kind {
            ArnKind::Role => "\"arn:aws:iam::123456789012:role/Annotators\"",
            ArnKind::SamlProvider => "\"arn:aws:iam::123456789012:saml-provider/Corp\"",
        };
        let Some(raw) = raw else {
            self.push(
                table.clone(),
                key,
                format!("required key is missing; add `{name} = {example}`"),
            );
            return None;
        };
        if !is_iam_arn(raw.get_ref(), kind) {
            self.push(
                raw.span(),
                key,
                format!(
                    "is not an IAM {} ARN; write it as the IdP sends it in the \
                     https://aws.amazon.com/SAML/Attributes/Role attribute, e.g. {example}",
                    match kind {
                        ArnKind::Role => "role",
                        ArnKind::SamlProvider => "SAML provider",
                    }
                ),
            );
            return None;
        }
        Some(raw.get_ref().clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArnKind {
    Role,
    SamlProvider,
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME` or `...:saml-provider/NAME`.
fn is_iam_arn(arn: &str, kind: ArnKind) -> bool {
    let Some((partition, resource)) = super::iam_arn_parts(arn) else {
        return false;
    };
    let name_ok = |name: &str, extra: &[u8]| {
        !name.is_empty()
            && name.len() <= 512
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b) || extra.contains(&b))
    };
    let resource_ok = match kind {
        ArnKind::Role => resource
            .strip_prefix("role/")
            .is_some_and(|n| name_ok(n, b"/") && !n.ends_with('/') && !n.starts_with('/')),
        ArnKind::SamlProvider => resource
            .strip_prefix("saml-provider/")
            .is_some_and(|n| name_ok(n, b"")),
    };
    matches!(partition, "aws" | "aws-cn" | "aws-us-gov") && resource_ok
}

/// The parts of an absolute URL the checks above look at.
struct Url {
    scheme: String,
    host: String,
    path: String,
    query: Option<String>,
    fragment: bool,
}

/// An absolute `scheme://host[:port]/path[?query]` URL without user info, or `None`.
fn parse_url(text: &str) -> Option<Url> {
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let fragment = text.contains('#');
    let uri: http::Uri = text.split('#').next()?.parse().ok()?;
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    Some(Url {
        scheme: uri.scheme_str()?.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        fragment,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The last segment of a dotted key.
fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn iam_arns_are_checked_by_kind() {
        assert!(is_iam_arn(
            "arn:aws:iam::123456789012:role/Annotators",
            ArnKind::Role
        ));
        assert!(is_iam_arn(
            "arn:aws:iam::123456789012:role/team/Annotators",
            ArnKind::Role
        ));
        assert!(is_iam_arn(
            "arn:aws-cn:iam::123456789012:saml-provider/Corp",
            ArnKind::SamlProvider
        ));
        assert!(!is_iam_arn(
            "arn:aws:iam::123456789012:saml-provider/Corp",
            ArnKind::Role
        ));
        assert!(!is_iam_arn("arn:aws:iam::12345:role/A", ArnKind::Role));
        assert!(!is_iam_arn(
            "arn:aws:sts::123456789012:role/A",
            ArnKind::Role
        ));
        assert!(!is_iam_arn(
            "arn:aws:iam::123456789012:role/",
            ArnKind::Role
        ));
        assert!(!is_iam_arn(
            "arn:aws:iam::123456789012:role/A B",
            ArnKind::Role
        ));
    }

    #[test]
    fn urls_keep_scheme_host_path_and_refuse_user_info() {
        let u = parse_url("https://gw.example.com:8443/auth/saml/acs").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str()),
            ("https", "gw.example.com")
        );
        assert_eq!(u.path, ACS_PATH);
        assert!(parse_url("https://user@gw.example.com/x").is_none());
        assert!(parse_url("/auth/saml/acs").is_none());
        assert!(parse_url("https://gw.example.com/a b").is_none());
        assert!(parse_url("https://gw.example.com/x#f").is_some_and(|u| u.fragment));
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && !is_loopback("10.0.0.1"));
    }
}
