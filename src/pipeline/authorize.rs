//! Stage 3, authorize: Principal x client address x target (source, key, representation) ->
//! [`Grant`], which holds the principal and consumes the target: what comes after authorization
//! (admit, plan) can only be reached with one.
//!
//! The decision is token scope ∩ project's sources (when the token names a project) ∩ role
//! permissions, plus the token's own bindings (`cip`, `rep`). Scopes are matched on the decoded
//! key (the plan stage has already refused dot segments and bad encodings), so no encoding trick
//! widens them. Every refusal is one 403 for the client; the clause that refused is kept for the
//! log, the audit record and `explain`.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::config::{ProjectConfig, RoleConfig};
use crate::identity::{Principal, Representation, Scope};
use crate::pipeline::network::ClientIp;

/// Roles and projects from one config snapshot.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: BTreeMap<String, RoleConfig>,
    projects: BTreeMap<String, ProjectConfig>,
}

impl Policy {
    pub fn new(
        roles: BTreeMap<String, RoleConfig>,
        projects: BTreeMap<String, ProjectConfig>,
    ) -> Policy {
        Policy { roles, projects }
    }
}

/// Why a verified token may not have this object. Each is a 403 with the same body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("client address is outside the token's cip {0}")]
    ClientAddress(IpNet),
    #[error("the token's rep does not include {0}")]
    Representation(&'static str),
    #[error("role {0} is not configured")]
    UnknownRole(String),
    #[error("role {role} may not read {rep}")]
    RoleForbids { role: String, rep: &'static str },
    #[error("no token scope admits the key")]
    Scope,
    #[error("project {0} is not configured")]
    UnknownProject(String),
    #[error("project {0} does not include the key")]
    Project(String),
}

impl AuthzError {
    /// The clause that refused, short, for logs and audit (never the client).
    pub fn rule(&self) -> String {
        match self {
            AuthzError::ClientAddress(net) => format!("cip {net}"),
            AuthzError::Representation(rep) => format!("rep excludes {rep}"),
            AuthzError::UnknownRole(role) => format!("role {role} unknown"),
            AuthzError::RoleForbids { role, rep } => format!("role {role} denies {rep}"),
            AuthzError::Scope => "scope".to_owned(),
            AuthzError::UnknownProject(p) => format!("project {p} unknown"),
            AuthzError::Project(p) => format!("project {p}"),
        }
    }
}

/// What may be authorized: a source, a decoded key and the class of representation asked for.
pub trait Resource {
    fn source(&self) -> &str;
    fn key(&self) -> &str;
    fn representation(&self) -> Representation;
}

/// Permission for one principal to have one target. Built only by [`authorize`], which consumes
/// the target; the admit stage consumes the grant in turn.
#[derive(Debug)]
pub struct Grant<'p, T> {
    principal: &'p Principal,
    target: T,
    rule: String,
}

impl<'p, T> Grant<'p, T> {
    /// Who was granted it (the principal itself, not copies of its strings).
    pub fn principal(&self) -> &'p Principal {
        self.principal
    }
    pub fn target(&self) -> &T {
        &self.target
    }
    /// The clauses that allowed it, e.g. `scope local:a/ & project p (local:) & role annotator`.
    pub fn rule(&self) -> &str {
        &self.rule
    }
    /// The target, for the stage after admission (`plan::resolve`).
    pub(crate) fn into_target(self) -> T {
        self.target
    }
}

/// Decide. Cheap checks first; the first clause that refuses is reported.
pub fn authorize<'p, T: Resource>(
    principal: &'p Principal,
    client: ClientIp,
    target: T,
    policy: &Policy,
) -> Result<Grant<'p, T>, AuthzError> {
    let (source, key, representation) = (target.source(), target.key(), target.representation());
    if let Some(net) = principal.client_binding()
        && !net.contains(&client.addr())
    {
        return Err(AuthzError::ClientAddress(net));
    }
    let rep = representation.as_str();
    if !principal.allows_representation(representation) {
        return Err(AuthzError::Representation(rep));
    }
    let role = policy
        .roles
        .get(principal.role())
        .ok_or_else(|| AuthzError::UnknownRole(principal.role().to_owned()))?;
    let role_allows = match representation {
        Representation::Original => role.read_original,
        Representation::Derived => role.read_derived,
    };
    if !role_allows {
        return Err(AuthzError::RoleForbids {
            role: principal.role().to_owned(),
            rep,
        });
    }
    let scope = first_admitting(principal.scopes(), source, key).ok_or(AuthzError::Scope)?;
    let project_rule = match principal.project() {
        None => String::new(),
        Some(name) => {
            let project = policy
                .projects
                .get(name)
                .ok_or_else(|| AuthzError::UnknownProject(name.to_owned()))?;
            let by = first_admitting(&project.sources, source, key)
                .ok_or_else(|| AuthzError::Project(name.to_owned()))?;
            format!(" & project {name} ({by})")
        }
    };
    let rule = format!("scope {scope}{project_rule} & role {}", principal.role());
    Ok(Grant {
        principal,
        target,
        rule,
    })
}

fn first_admitting<'a>(scopes: &'a [Scope], source: &str, key: &str) -> Option<&'a Scope> {
    scopes.iter().find(|s| s.admits(source, key))
}
