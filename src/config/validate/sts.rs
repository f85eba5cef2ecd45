//! `[sts]` and the STS-backed source credentials (`credentials = "saml"` and the
//! `{ assume_role = ... }` table) — a child of `validate/mod.rs`, so it shares the [`Checker`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawCredentials, RawSource, RawStaticCredentials, RawSts};
use super::super::{AssumeRoleConfig, S3Credentials, StaticKeys, StsConfig};
use super::Checker;
use super::sources::{is_valid_region, normalize_endpoint};

/// STS limits on a role session name: 2 to 64 of `[\w+=,.@-]`.
const SESSION_NAME_MIN: usize = 2;
const SESSION_NAME_MAX: usize = 64;
/// STS limits on an ExternalId: 2 to 1224 of `[\w+=,.@:/-]`.
const EXTERNAL_ID_MIN: usize = 2;
const EXTERNAL_ID_MAX: usize = 1224;

impl Checker<'_> {
    /// `[sts]`: every key optional (region `us-east-1`, AWS's endpoint, 5 s, default chain).
    pub(super) fn sts(&mut self, raw: Option<&Spanned<RawSts>>) -> Option<StsConfig> {
        let Some(raw) = raw else {
            return Some(StsConfig::default());
        };
        let raw = raw.get_ref();
        let before = self.errors.len();
        let region = match &raw.region {
            None => d::DEFAULT_STS_REGION.to_owned(),
            Some(region) if is_valid_region(region.get_ref()) => region.get_ref().clone(),
            Some(region) => {
                self.push(
                    region.span(),
                    "sts.region",
                    format!(
                        "`{}` is not a region name; use a region code such as \"us-east-1\", or \
                         remove the key for the default \"{}\"",
                        region.get_ref(),
                        d::DEFAULT_STS_REGION
                    ),
                );
                String::new()
            }
        };
        let endpoint = match &raw.endpoint {
            None => None,
            Some(endpoint) => match normalize_endpoint(endpoint.get_ref()) {
                Ok(url) => Some(url),
                Err(fix) => {
                    self.push(endpoint.span(), "sts.endpoint", fix);
                    None
                }
            },
        };
        let timeout = self.bounded(
            &raw.timeout_secs,
            "sts.timeout_secs",
            d::STS_TIMEOUT_SECS,
            1,
            d::STS_TIMEOUT_SECS_MAX,
        );
        let credentials = match self.credentials("sts", raw.credentials.as_ref()) {
            Some(S3Credentials::DefaultChain) | None => None,
            Some(S3Credentials::Static {
                access_key_id,
                secret_access_key,
            }) => Some(StaticKeys {
                access_key_id,
                secret_access_key,
            }),
            Some(S3Credentials::Saml | S3Credentials::AssumeRole(_)) => {
                if let Some(c) = &raw.credentials {
                    self.push(
                        c.span(),
                        "sts.credentials",
                        "the gateway's own credentials for STS are \"default\" (the AWS default \
                         chain) or a table `{ access_key_id = \"...\", secret_access_key = \
                         \"env:NAME\" }`; \"saml\" and assume_role belong on a source",
                    );
                }
                None
            }
        };
        if self.errors.len() != before {
            return None;
        }
        Some(StsConfig {
            region,
            endpoint,
            timeout: Duration::from_secs(timeout),
            credentials,
        })
    }

    /// `credentials = { assume_role = ..., external_id = ..., session_name = ...,
    /// duration_secs = ... }` of the source `source_key`. `span` is the whole table's.
    pub(super) fn assume_role_credentials(
        &mut self,
        key: &str,
        span: Range<usize>,
        raw: &RawStaticCredentials,
    ) -> Option<S3Credentials> {
        let before = self.errors.len();
        for (name, field) in [
            ("access_key_id", &raw.access_key_id),
            ("secret_access_key", &raw.secret_access_key),
        ] {
            if let Some(field) = field {
                self.push(
                    field.span(),
                    format!("{key}.{name}"),
                    "static keys and assume_role are two kinds of credentials; keep either \
                     `access_key_id`/`secret_access_key` or `assume_role` (the gateway signs \
                     AssumeRole with [sts] credentials)",
                );
            }
        }
        let role_arn = match &raw.assume_role {
            None => {
                self.push(
                    span,
                    format!("{key}.assume_role"),
                    "`external_id`, `session_name` and `duration_secs` only go with assume_role; \
                     add `assume_role = \"arn:aws:iam::123456789012:role/Reader\"`",
                );
                None
            }
            Some(arn) if is_role_arn(arn.get_ref()) => Some(arn.get_ref().clone()),
            Some(arn) => {
                self.push(
                    arn.span(),
                    format!("{key}.assume_role"),
                    "is not an IAM role ARN; write it as \
                     \"arn:aws:iam::ACCOUNT_ID:role/NAME\" (12-digit account id)",
                );
                None
            }
        };
        let external_id = match &raw.external_id {
            None => None,
            Some(ext) if sts_chars(ext.get_ref(), ":/", EXTERNAL_ID_MIN, EXTERNAL_ID_MAX) => {
                Some(ext.get_ref().clone())
            }
            Some(ext) => {
                // Not echoed: customers treat the ExternalId as confidential.
                self.push(
                    ext.span(),
                    format!("{key}.external_id"),
                    format!(
                        "must be {EXTERNAL_ID_MIN} to {EXTERNAL_ID_MAX} characters of letters, \
                         digits and `+=,.@:/-_`; copy it exactly as the role's owner gave it"
                    ),
                );
                None
            }
        };
        let session_name = match &raw.session_name {
            None => d::DELEGATED_SESSION_NAME.to_owned(),
            Some(name) if sts_chars(name.get_ref(), "", SESSION_NAME_MIN, SESSION_NAME_MAX) => {
                name.get_ref().clone()
            }
            Some(name) => {
                self.push(
                    name.span(),
                    format!("{key}.session_name"),
                    format!(
                        "must be {SESSION_NAME_MIN} to {SESSION_NAME_MAX} characters of letters, \
                         digits and `+=,.@-_`, e.g. \"{}\"",
                        d::DELEGATED_SESSION_NAME
                    ),
                );
                String::new()
            }
        };
        let duration = self.bounded(
            &raw.duration_secs,
            &format!("{key}.duration_secs"),
            d::DELEGATED_DURATION_SECS,
            d::STS_MIN_DURATION_SECS,
            d::STS_MAX_DURATION_SECS,
        );
        if self.errors.len() != before {
            return None;
        }
        Some(S3Credentials::AssumeRole(AssumeRoleConfig {
            role_arn: role_arn?,
            external_id,
            session_name,
            duration: Duration::from_secs(duration),
        }))
    }

    /// A source with `credentials = "saml"` can only ever be read by SAML sessions: without a
    /// `[saml]` section every request to it would be refused.
    pub(super) fn saml_sources_need_saml(
        &mut self,
        sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
        saml_configured: bool,
    ) {
        if saml_configured {
            return;
        }
        let Some(sources) = sources else { return };
        for (name, source) in sources.get_ref() {
            if let Some(c) = &source.get_ref().credentials
                && matches!(c.get_ref(), RawCredentials::Named(n) if n == "saml")
            {
                self.push(
                    c.span(),
                    format!(
                        "{}.credentials",
                        super::dotted(&["sources", name.get_ref().as_str()])
                    ),
                    "credentials = \"saml\" signs each read with the user's SAML session, but \
                     there is no [saml] section; add [saml] (see config.toml.example) or use \
                     other credentials",
                );
            }
        }
    }
}

/// `arn:PARTITION:iam::123456789012:role/PATH/NAME`.
fn is_role_arn(arn: &str) -> bool {
    let Some((partition, resource)) = super::iam_arn_parts(arn) else {
        return false;
    };
    let name = resource.strip_prefix("role/").unwrap_or("");
    partition.starts_with("aws")
        && !name.is_empty()
        && !name.ends_with('/')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// `value` is `min..=max` characters of `[\w+=,.@-]` plus `extra`.
fn sts_chars(value: &str, extra: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&value.len())
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b) || extra.as_bytes().contains(&b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_name_an_iam_role_in_a_12_digit_account() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/Reader"));
        assert!(is_role_arn("arn:aws:iam::123456789012:role/team/Reader"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/R"));
        for bad in [
            "arn:aws:iam::123456789012:user/Reader",
            "arn:aws:iam::12345:role/Reader",
            "arn:aws:sts::123456789012:role/Reader",
            "arn:aws:iam::123456789012:role/",
            "Reader",
            "arn:aws:iam::123456789012:role/a b",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn sts_strings_follow_the_sts_alphabet() {
        assert!(sts_chars("bucketgate", "", 2, 64));
        assert!(!sts_chars("x", "", 2, 64));
        assert!(!sts_chars("has space", "", 2, 64));
        assert!(sts_chars("ext:1/2", ":/", 2, 1224));
        assert!(!sts_chars("ext:1/2", "", 2, 1224));
    }
}
