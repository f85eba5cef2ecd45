//! SAML 2.0 service provider: the protocol core (AuthnRequest, response validation, replay
//! cache), the login cookie's MAC (`login_cookie.rs`), the server-side sessions (`session.rs`)
//! and the login flow (`sp.rs`). The `/auth/` routes, cookies and responses are the HTTP half,
//! `pipeline/auth.rs`. Nothing here imports the pipeline or knows HTTP.

pub mod login_cookie;
pub mod replay;
pub mod request;
pub mod response;
pub mod session;
pub mod sp;
