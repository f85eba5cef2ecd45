//! The test SAML IdP (`saml_idp.py`, signxml) as a Rust value: start it, ask it for signed (or
//! deliberately broken) responses, follow its SSO redirect page.
//!
//! The IdP is a real HTTP server on 127.0.0.1:0 run by the repository venv's python
//! (`tests/run` installs signxml there). It exits when our end of its stdin closes, so even a
//! shared `'static` instance ([`TestIdp::shared`]) never outlives the test binary. Its HTTP API
//! is spoken here over a plain std `TcpStream` (HTTP/1.0, `Connection: close`), so the helpers
//! work from sync tests and from any tokio runtime alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::process::ChildGuard;

/// A running test IdP. Stopped and reaped on drop.
pub struct TestIdp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The IdP's entity id (the `<Issuer>` of its responses): `{base}/metadata`.
    pub entity_id: String,
    /// `{base}/sso`: the HTTP-Redirect SSO endpoint.
    pub sso_url: String,
    /// DER of the primary signing certificate (what responses are signed with by default).
    pub cert_der: Vec<u8>,
    /// PEM of the primary signing certificate (for `certificates = ["file:..."]`).
    pub cert_pem: String,
    /// A second RSA key's certificate (`"key": "secondary"`): rotation and wrong-key tests.
    pub secondary_cert_der: Vec<u8>,
    pub secondary_cert_pem: String,
    /// An EC P-256 key's certificate (`"key": "ec"`, signed ECDSA-SHA256).
    pub ec_cert_der: Vec<u8>,
    child: Mutex<Option<(ChildGuard, ChildStdin)>>,
}

/// The fields of the IdP's auto-submitting form (what a browser would POST to the ACS URL).
#[derive(Debug, Clone)]
pub struct AutoPost {
    pub action: String,
    pub saml_response: String,
    pub relay_state: Option<String>,
}

fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./tests/run once to create the venv (with signxml)",
        python.display()
    );
    python
}

impl TestIdp {
    /// Start a new IdP (about 0.5 s: it generates three keys).
    pub async fn start() -> TestIdp {
        tokio::task::spawn_blocking(TestIdp::start_blocking)
            .await
            .expect("start the test IdP")
    }

    /// One IdP for the whole test binary, started on first use.
    pub fn shared() -> &'static TestIdp {
        static IDP: OnceLock<TestIdp> = OnceLock::new();
        IDP.get_or_init(TestIdp::start_blocking)
    }

    pub fn start_blocking() -> TestIdp {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/saml_idp.py");
        // Guarded from here on: a panic below still stops and reaps the IdP.
        let mut child = ChildGuard::spawn(
            "tests/support/saml_idp.py",
            Command::new(python())
                .arg(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdin = child.child().stdin.take().expect("IdP stdin");
        let stdout = child.child().stdout.take().expect("IdP stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the IdP's first line");
        let hello: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the test IdP did not start (first line {line:?}): {e}; is signxml installed? run ./tests/run")
        });
        let base = hello["base"].as_str().expect("base").to_owned();
        let mut idp = TestIdp {
            entity_id: hello["entity_id"].as_str().expect("entity_id").to_owned(),
            sso_url: format!("{base}/sso"),
            base,
            cert_der: Vec::new(),
            cert_pem: String::new(),
            secondary_cert_der: Vec::new(),
            secondary_cert_pem: String::new(),
            ec_cert_der: Vec::new(),
            child: Mutex::new(Some((child, stdin))),
        };
        let (status, body) = idp.http("GET", "/certs", None);
        assert_eq!(status, 200, "GET /certs");
        let certs: Value = serde_json::from_slice(&body).expect("certs JSON");
        let der = |name: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(certs[name].as_str().expect("cert"))
                .expect("cert base64")
        };
        idp.cert_der = der("primary");
        idp.secondary_cert_der = der("secondary");
        idp.ec_cert_der = der("ec");
        idp.cert_pem = pem(&idp.cert_der);
        idp.secondary_cert_pem = pem(&idp.secondary_cert_der);
        idp
    }

    /// A base64 SAMLResponse built from `spec` (see `build` in saml_idp.py for the keys; at
    /// least `audience` and `recipient`).
    pub async fn response(&self, spec: &Value) -> String {
        let base = self.base.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || response_at(&base, &spec))
            .await
            .expect("IdP response task")
    }

    pub fn response_blocking(&self, spec: &Value) -> String {
        response_at(&self.base, spec)
    }

    /// Merge `spec` into what `GET /sso` signs (e.g. `{"name_id": ..., "roles": [[r, p]]}`).
    pub async fn set_defaults(&self, spec: &Value) {
        let base = self.base.clone();
        let body = spec.to_string();
        tokio::task::spawn_blocking(move || {
            let (status, reply) = http_at(&base, "POST", "/defaults", Some(body.as_bytes()));
            assert_eq!(
                status,
                200,
                "POST /defaults: {}",
                String::from_utf8_lossy(&reply)
            );
        })
        .await
        .expect("IdP defaults task");
    }

    /// What a browser does with the gateway's redirect to the IdP: GET it and read the
    /// auto-POST form. `location` is the full `{sso_url}?SAMLRequest=...` URL.
    pub async fn follow_redirect(&self, location: &str) -> AutoPost {
        let base = self.base.clone();
        let location = location.to_owned();
        tokio::task::spawn_blocking(move || follow_redirect_at(&base, &location))
            .await
            .expect("IdP SSO task")
    }

    pub fn follow_redirect_blocking(&self, location: &str) -> AutoPost {
        follow_redirect_at(&self.base, location)
    }

    fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        http_at(&self.base, method, path, body)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.child.lock().ok().and_then(|mut c| c.take()) {
            // It exits when its stdin closes; the guard makes sure and reaps it.
            drop(stdin);
            child.stop();
        }
    }
}

fn response_at(base: &str, spec: &Value) -> String {
    let (status, body) = http_at(base, "POST", "/response", Some(spec.to_string().as_bytes()));
    assert_eq!(
        status,
        200,
        "IdP refused spec {spec}: {}",
        String::from_utf8_lossy(&body)
    );
    let reply: Value = serde_json::from_slice(&body).expect("IdP JSON");
    reply["saml_response"]
        .as_str()
        .expect("saml_response")
        .to_owned()
}

fn follow_redirect_at(base: &str, location: &str) -> AutoPost {
    let path = location
        .strip_prefix(base)
        .unwrap_or_else(|| panic!("redirect is not to the test IdP: {location}"));
    let (status, body) = http_at(base, "GET", path, None);
    let page = String::from_utf8(body).expect("UTF-8 page");
    assert_eq!(status, 200, "GET {path}: {page}");
    parse_auto_post(&page)
}

fn http_at(base: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let addr = base.strip_prefix("http://").expect("http base");
    let mut stream = TcpStream::connect(addr).expect("connect to the test IdP");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write request");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, raw[split + 4..].to_vec())
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Read the form of the IdP's auto-POST page.
pub fn parse_auto_post(page: &str) -> AutoPost {
    let attr_after = |marker: &str, attr: &str| -> Option<String> {
        let at = page.find(marker)?;
        let rest = &page[at..];
        let key = format!("{attr}=\"");
        let start = rest.find(&key)? + key.len();
        let end = rest[start..].find('"')? + start;
        Some(html_unescape(&rest[start..end]))
    };
    AutoPost {
        action: attr_after("<form", "action").expect("form action"),
        saml_response: attr_after("name=\"SAMLResponse\"", "value").expect("SAMLResponse"),
        relay_state: attr_after("name=\"RelayState\"", "value"),
    }
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `s` percent-encoded for an `application/x-www-form-urlencoded` body.
pub fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The ID of the AuthnRequest in an HTTP-Redirect URL (raw DEFLATE, base64, url-encoded).
pub fn authn_request_id(location: &str) -> String {
    let query = location.split_once('?').unwrap().1;
    let value = query
        .split('&')
        .find_map(|p| p.strip_prefix("SAMLRequest="))
        .unwrap();
    let b64 = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .unwrap();
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(raw.as_slice())
        .read_to_string(&mut xml)
        .unwrap();
    let start = xml.find(" ID=\"").unwrap() + 5;
    let end = start + xml[start..].find('"').unwrap();
    xml[start..end].to_owned()
}
