//! SAML 2.0 service provider: the protocol core (AuthnRequest, response validation, replay
//! cache), the server-side sessions (`session.rs`) and the `/auth/` routes (`sp.rs`).

pub mod replay;
pub mod request;
pub mod response;
pub mod session;
pub mod sp;
