//! `[sources.NAME]`: names, fs roots, s3 buckets, prefixes, regions, endpoints and static
//! credentials — a child of `validate/mod.rs`, so it shares the [`Checker`]. The STS-backed
//! credentials are `sts.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawCredentials, RawSource};
use super::super::{FsSource, S3Credentials, S3Source, SourceConfig};
use super::{Checker, dotted};

impl Checker<'_> {
    pub(super) fn sources(
        &mut self,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> Option<BTreeMap<String, SourceConfig>> {
        const NONE_HINT: &str = "add at least one, e.g. a table [sources.local] with \
                                 `kind = \"fs\"` and `root = \"./data\"`";
        let Some(raw) = raw else {
            self.push(
                0..0,
                "sources",
                format!("no sources are configured; {NONE_HINT}"),
            );
            return None;
        };
        if raw.get_ref().is_empty() {
            self.push(
                raw.span(),
                "sources",
                format!("no sources are configured; {NONE_HINT}"),
            );
            return None;
        }
        let before = self.errors.len();
        let mut sources = BTreeMap::new();
        for (name, source) in raw.get_ref() {
            let key = dotted(&["sources", name.get_ref().as_str()]);
            if !is_valid_source_name(name.get_ref()) {
                self.push(
                    name.span(),
                    key.clone(),
                    format!(
                        "`{}` is not a valid source name; use 1 to 63 lowercase letters, digits, \
                         `_` or `-`, starting with a letter or a digit (it appears in URLs as \
                         /o/NAME/...)",
                        name.get_ref()
                    ),
                );
            }
            if let Some(source) = self.source(&key, source) {
                sources.insert(name.get_ref().clone(), source);
            }
        }
        (self.errors.len() == before).then_some(sources)
    }

    pub(super) fn source(&mut self, key: &str, raw: &Spanned<RawSource>) -> Option<SourceConfig> {
        let span = raw.span();
        let raw = raw.get_ref();
        let Some(kind) = &raw.kind else {
            self.push(
                span,
                format!("{key}.kind"),
                "required key is missing; add `kind = \"fs\"` (a local directory) or \
                 `kind = \"s3\"` (an S3 or S3-compatible bucket)",
            );
            return None;
        };
        match kind.get_ref().as_str() {
            "fs" => self.fs_source(key, span, raw),
            "s3" => self.s3_source(key, span, raw),
            other => {
                self.push(
                    kind.span(),
                    format!("{key}.kind"),
                    format!("unknown kind `{other}`; use \"fs\" or \"s3\""),
                );
                None
            }
        }
    }

    pub(super) fn fs_source(
        &mut self,
        key: &str,
        span: Range<usize>,
        raw: &RawSource,
    ) -> Option<SourceConfig> {
        let s3_only = [
            ("bucket", raw.bucket.as_ref().map(Spanned::span)),
            ("prefix", raw.prefix.as_ref().map(Spanned::span)),
            ("region", raw.region.as_ref().map(Spanned::span)),
            ("endpoint", raw.endpoint.as_ref().map(Spanned::span)),
            ("path_style", raw.path_style.as_ref().map(Spanned::span)),
            ("credentials", raw.credentials.as_ref().map(Spanned::span)),
        ];
        let mut misplaced = false;
        for (field, field_span) in s3_only {
            if let Some(field_span) = field_span {
                misplaced = true;
                self.push(
                    field_span,
                    format!("{key}.{field}"),
                    format!(
                        "`{field}` is only valid for kind = \"s3\"; remove it, or set \
                         kind = \"s3\" if this source is a bucket"
                    ),
                );
            }
        }
        let Some(root) = &raw.root else {
            self.push(
                span,
                format!("{key}.root"),
                "required key is missing for kind = \"fs\"; add `root = \"./data\"` (a \
                 directory; relative paths are resolved from the config file's directory)",
            );
            return None;
        };
        let root = self.existing_dir(root, &format!("{key}.root"));
        if misplaced {
            return None;
        }
        Some(SourceConfig::Fs(FsSource { root: root? }))
    }

    pub(super) fn s3_source(
        &mut self,
        key: &str,
        span: Range<usize>,
        raw: &RawSource,
    ) -> Option<SourceConfig> {
        let mut ok = true;
        if let Some(root) = &raw.root {
            ok = false;
            self.push(
                root.span(),
                format!("{key}.root"),
                "`root` is only valid for kind = \"fs\"; remove it, or set kind = \"fs\" if this \
                 source is a local directory",
            );
        }

        let bucket = match &raw.bucket {
            None => {
                self.push(
                    span,
                    format!("{key}.bucket"),
                    "required key is missing for kind = \"s3\"; add `bucket = \"my-bucket\"`",
                );
                None
            }
            Some(bucket) => match bucket_name_problem(bucket.get_ref()) {
                None => Some(bucket.get_ref().clone()),
                Some(problem) => {
                    self.push(
                        bucket.span(),
                        format!("{key}.bucket"),
                        format!(
                            "`{}` is not a valid S3 bucket name: it {problem}; use the bucket's \
                             exact name (3 to 63 lowercase letters, digits, `.` or `-`)",
                            bucket.get_ref()
                        ),
                    );
                    None
                }
            },
        };

        let prefix = match &raw.prefix {
            None => Some(String::new()),
            Some(prefix) => match prefix_problem(prefix.get_ref()) {
                None => Some(prefix.get_ref().clone()),
                Some(fix) => {
                    self.push(prefix.span(), format!("{key}.prefix"), fix);
                    None
                }
            },
        };

        let region = match &raw.region {
            None => Some(d::DEFAULT_S3_REGION.to_owned()),
            Some(region) if is_valid_region(region.get_ref()) => Some(region.get_ref().clone()),
            Some(region) => {
                self.push(
                    region.span(),
                    format!("{key}.region"),
                    format!(
                        "`{}` is not a region name; use a region code such as \"us-east-1\" \
                         (letters, digits and `-`), or remove the key for the default \"{}\"",
                        region.get_ref(),
                        d::DEFAULT_S3_REGION
                    ),
                );
                None
            }
        };

        let endpoint = match &raw.endpoint {
            None => Some(None),
            Some(endpoint) => match normalize_endpoint(endpoint.get_ref()) {
                Ok(url) => Some(Some(url)),
                Err(fix) => {
                    self.push(endpoint.span(), format!("{key}.endpoint"), fix);
                    None
                }
            },
        };

        let path_style = raw.path_style.as_ref().is_some_and(|p| *p.get_ref());
        let credentials = self.credentials(key, raw.credentials.as_ref());

        if !ok {
            return None;
        }
        Some(SourceConfig::S3(S3Source {
            bucket: bucket?,
            prefix: prefix?,
            region: region?,
            endpoint: endpoint?,
            path_style,
            credentials: credentials?,
        }))
    }

    pub(super) fn credentials(
        &mut self,
        source_key: &str,
        raw: Option<&Spanned<RawCredentials>>,
    ) -> Option<S3Credentials> {
        let key = format!("{source_key}.credentials");
        let Some(raw) = raw else {
            return Some(S3Credentials::DefaultChain);
        };
        match raw.get_ref() {
            RawCredentials::Named(name) if name == "default" => Some(S3Credentials::DefaultChain),
            RawCredentials::Named(name) if name == "saml" => Some(S3Credentials::Saml),
            RawCredentials::Named(_) => {
                // The value is not echoed: a string here may well be a pasted secret.
                self.push(
                    raw.span(),
                    key,
                    "unknown credentials value; write `credentials = \"default\"` for the AWS \
                     default chain, `\"saml\"` for each user's SAML session, a table \
                     `{ access_key_id = \"...\", secret_access_key = \"env:NAME\" }` for static \
                     keys, or `{ assume_role = \"arn:...\", external_id = \"...\" }` for a role",
                );
                None
            }
            RawCredentials::Static(st)
                if st.assume_role.is_some()
                    || st.external_id.is_some()
                    || st.session_name.is_some()
                    || st.duration_secs.is_some() =>
            {
                self.assume_role_credentials(&key, raw.span(), st)
            }
            RawCredentials::Static(st) => {
                let access_key_id = match &st.access_key_id {
                    None => {
                        self.push(
                            raw.span(),
                            format!("{key}.access_key_id"),
                            "required key is missing in static credentials; add \
                             `access_key_id = \"AKIA...\"`",
                        );
                        None
                    }
                    Some(id) if id.get_ref().trim().is_empty() => {
                        self.push(
                            id.span(),
                            format!("{key}.access_key_id"),
                            "is empty; set it to the access key id of the credentials",
                        );
                        None
                    }
                    Some(id) => Some(id.get_ref().trim().to_owned()),
                };
                let secret = match &st.secret_access_key {
                    None => {
                        self.push(
                            raw.span(),
                            format!("{key}.secret_access_key"),
                            "required key is missing in static credentials; add \
                             `secret_access_key = \"env:NAME\"` or `\"file:/path/to/secret\"`",
                        );
                        None
                    }
                    Some(secret) => self.secret(secret, &format!("{key}.secret_access_key")),
                };
                Some(S3Credentials::Static {
                    access_key_id: access_key_id?,
                    secret_access_key: secret?,
                })
            }
        }
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: the name appears in URL paths and metric labels.
pub(super) fn is_valid_source_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// What is wrong with an S3 bucket name (general purpose bucket naming rules), phrased to follow
/// "it ...", or `None` if it is valid.
pub(super) fn bucket_name_problem(name: &str) -> Option<&'static str> {
    const RESERVED_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const RESERVED_SUFFIXES: [&str; 4] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Some("must be 3 to 63 characters long");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
    {
        return Some("may contain only lowercase letters, digits, `.` and `-`");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(bytes.first()) || !alnum(bytes.last()) {
        return Some("must begin and end with a lowercase letter or a digit");
    }
    if name.contains("..") {
        return Some("must not contain two adjacent periods");
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some("must not be formatted as an IP address");
    }
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s))
    {
        return Some("uses a prefix or suffix that S3 reserves");
    }
    None
}

/// What is wrong with a key prefix, and how to fix it, or `None` if it is valid.
pub(super) fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.starts_with('/') {
        let trimmed = prefix.trim_start_matches('/');
        let suggestion = if trimmed.is_empty() || trimmed.ends_with('/') {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/")
        };
        return Some(format!(
            "must not start with `/` (S3 keys have no leading slash); write \"{suggestion}\""
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Some(format!(
            "must end with `/` so that it names a folder; write \"{prefix}/\", or \"\" for the \
             whole bucket"
        ));
    }
    None
}

pub(super) fn is_valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `http(s)://host[:port]`, with no path, query or user info, as `scheme://authority`; or what
/// is wrong and how to fix it. Messages do not echo the value: user info may hold a password.
pub(super) fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    const FORM: &str =
        "write it as http://HOST:PORT or https://HOST, e.g. \"http://127.0.0.1:9000\"";
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("is not a valid URL; {FORM}"))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err(format!("must start with http:// or https://; {FORM}")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("has no host; {FORM}"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user info (`user:password@`); remove it and give keys with \
                    the `credentials` key"
                .to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("has no host; {FORM}"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(
            "must not have a path; give only scheme, host and port, and put a key \
                    prefix in `prefix`"
                .to_owned(),
        );
    }
    if uri.query().is_some() {
        return Err(format!("must not have a query string; {FORM}"));
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn source_names_follow_the_documented_pattern() {
        for ok in ["a", "photos", "0", "a-b_c", &"a".repeat(63)] {
            assert!(is_valid_source_name(ok), "{ok}");
        }
        for bad in ["", "Photos", "-a", "_a", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(!is_valid_source_name(bad), "{bad}");
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my-bucket", "my.bucket.1", &"a".repeat(63)] {
            assert_eq!(bucket_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "my_bucket",
            "-abc",
            "abc.",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "abc-s3alias",
        ] {
            assert!(bucket_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn prefix_is_empty_or_a_folder_without_leading_slash() {
        assert_eq!(prefix_problem(""), None);
        assert_eq!(prefix_problem("photos/"), None);
        assert_eq!(prefix_problem("a/b/"), None);
        assert!(prefix_problem("photos").is_some_and(|m| m.contains("\"photos/\"")));
        assert!(prefix_problem("/photos").is_some_and(|m| m.contains("\"photos/\"")));
        assert!(prefix_problem("/").is_some());
    }

    #[test]
    fn endpoint_is_scheme_and_authority_only() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:9000").as_deref(),
            Ok("http://127.0.0.1:9000")
        );
        assert_eq!(
            normalize_endpoint("HTTPS://s3.example.com/").as_deref(),
            Ok("https://s3.example.com")
        );
        for bad in [
            "127.0.0.1:9000",
            "ftp://host",
            "http://host/bucket",
            "http://host?x=1",
            "http://user:pw@host",
            "http://:9000",
            "not a url",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_errors_never_echo_user_info() {
        let message = normalize_endpoint("http://user:hunter2@host").unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
    }
}
