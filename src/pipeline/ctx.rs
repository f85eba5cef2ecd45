//! The per-request context: what the stages learn about one request and what the request span
//! and the audit record report about it. Each method writes the span field and the audit
//! [`Facts`] together, once, so the log line and the audit record never disagree.
//!
//! It holds no policy and decides nothing: stages decide, then tell the context.

use std::fmt;
use std::net::SocketAddr;

use crate::audit::{CorsOutcome, Decision, Facts, header_text};
use crate::identity::Principal;

use super::identity::Authenticated;
use super::network::ClientIp;
use super::plan::Target;

/// One request's context (pingora's CTX): its id, route label, span and audit facts.
pub struct RequestCtx {
    request_id: String,
    route: &'static str,
    span: tracing::Span,
    facts: Facts,
}

impl RequestCtx {
    /// A new request from `peer`: a fresh id, the span every log line of the request is in, and
    /// audit facts that say `deny` until the authorize stage allows.
    pub fn new(method: &http::Method, route: &'static str, peer: SocketAddr) -> RequestCtx {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %method,
            route,
            peer = %peer,
            client = tracing::field::Empty,
            decision = tracing::field::Empty,
            rule = tracing::field::Empty,
            source = tracing::field::Empty,
            subject = tracing::field::Empty,
            role = tracing::field::Empty,
            project = tracing::field::Empty,
            cache = tracing::field::Empty,
            origin = tracing::field::Empty,
            cors = tracing::field::Empty,
            range = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        RequestCtx {
            facts: Facts::new(peer.ip().to_canonical(), method, route),
            request_id,
            route,
            span,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The bounded route label (`object`, `auth`, `other`).
    pub fn route(&self) -> &'static str {
        self.route
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The address the request is judged by (stage 1).
    pub fn client(&mut self, client: ClientIp) {
        self.span.record("client", tracing::field::display(client));
        self.facts.client = client.addr();
    }

    /// The request could not be judged (stage 0, or a malformed forwarded header): refused, and
    /// by which check when it has a name.
    pub fn malformed(&mut self, rule: Option<&str>) {
        self.span.record("decision", "malformed");
        if let Some(rule) = rule {
            self.span.record("rule", rule);
            self.facts.rule = Some(rule.to_owned());
        }
        self.facts.decision = Decision::Deny;
    }

    /// A stage refused the request by `rule`.
    pub fn deny(&mut self, rule: impl fmt::Display) {
        let rule = rule.to_string();
        self.span.record("decision", "deny");
        self.span.record("rule", rule.as_str());
        self.facts.decision = Decision::Deny;
        self.facts.rule = Some(rule);
    }

    /// The request may have what it asked for, by `rule` (the authorize stage, or a SAML route).
    pub fn allow(&mut self, rule: impl fmt::Display) {
        let rule = rule.to_string();
        self.span.record("decision", "allow");
        self.span.record("rule", rule.as_str());
        self.facts.decision = Decision::Allow;
        self.facts.rule = Some(rule);
    }

    /// The request's `Origin` header (the first, if repeated) and what `[cors]` made of it.
    pub fn origin(&mut self, origin: Option<&http::HeaderValue>, outcome: CorsOutcome) {
        self.span.record("cors", outcome.as_str());
        self.facts.cors = outcome;
        if let Some(origin) = origin {
            let text = header_text(origin.as_bytes());
            self.span.record("origin", text.as_str());
            self.facts.origin = Some(text);
        }
    }

    /// The request's `Range` header, as sent (the first, if repeated).
    pub fn range(&mut self, range: Option<&http::HeaderValue>) {
        if let Some(range) = range {
            let text = header_text(range.as_bytes());
            self.span.record("range", text.as_str());
            self.facts.range = Some(text);
        }
    }

    /// A CORS preflight was answered: allowed by the `[cors]` entry `rule`, or refused (`None`;
    /// the request's `cors` outcome says why). Not an authorization decision: no token was
    /// asked for and no object is reached.
    pub fn preflight(&mut self, rule: Option<impl fmt::Display>) {
        self.span.record("decision", "preflight");
        self.facts.decision = Decision::Preflight;
        match rule {
            Some(rule) => {
                let rule = rule.to_string();
                self.span.record("rule", rule.as_str());
                self.facts.rule = Some(rule);
            }
            // The span keeps the network stage's rule (a field cannot be unset); the audit
            // record says that no `[cors]` entry matched.
            None => self.facts.rule = None,
        }
    }

    /// The network stage let the request through by `rule`. Only the span says so: whether the
    /// request is allowed is decided later (a 400 or 401 after this is audited as a denial).
    pub fn passed_network(&mut self, rule: impl fmt::Display) {
        self.span.record("decision", "allow");
        self.span.record("rule", tracing::field::display(rule));
    }

    /// What the object stage parsed: the source as written, the decoded key, the representation.
    pub fn target(&mut self, target: &Target) {
        self.span.record("source", target.source());
        self.facts.source = Some(target.source().to_owned());
        self.facts.key = Some(target.key().to_owned());
        self.facts.representation = Some(target.representation().class().as_str());
        self.facts.params = target.representation().params();
    }

    /// Who the request is (stage 2): the principal and the hash of its token or session id.
    pub fn authenticated(&mut self, authenticated: &Authenticated) {
        self.facts.token_hash = Some(authenticated.token_hash().to_owned());
        self.principal(authenticated.principal());
    }

    /// Who the request is: subject, role and project.
    pub fn principal(&mut self, principal: &Principal) {
        self.who(
            Some(principal.subject()),
            Some(principal.role()),
            principal.project(),
        );
    }

    /// Who a SAML route's request turned out to be, as far as it got.
    pub fn who(&mut self, subject: Option<&str>, role: Option<&str>, project: Option<&str>) {
        for (field, value) in [("subject", subject), ("role", role), ("project", project)] {
            if let Some(value) = value {
                self.span.record(field, value);
            }
        }
        self.facts.subject = subject.map(str::to_owned);
        self.facts.role = role.map(str::to_owned);
        self.facts.project = project.map(str::to_owned);
    }

    /// Where the response's bytes come from (stage 6): `hit-memory`, `hit-disk`, `miss`,
    /// `coalesced`, or `bypass` when the cache did not take part.
    pub fn cache(&mut self, outcome: crate::cache::Outcome) {
        self.span.record("cache", outcome.label());
        self.facts.cache = Some(outcome.label());
    }

    /// The answer's status, on the span; the audit facts to write once the body is done.
    pub fn finish(self, status: u16) -> Facts {
        self.span.record("status", status);
        self.facts
    }
}
