//! bucketgate: a TLS reverse proxy and storage gateway that serves bucket objects to labeling UIs
//! without making buckets public or handing out bucket credentials.
//!
//! The crate is a library with a thin binary (`main.rs`) so that tests and benches drive the same
//! code. See `pipeline/mod.rs` for the request lifecycle.
//!
//! Dependency direction (an acyclic graph of the production code; `python3 benches/structure.py`
//! prints it, with any cycle or back-arrow):
//!
//! ```text
//! app                          composition root: names everything
//! server, admin, reload        listeners and live changes -> pipeline
//! pipeline                     the request stages -> state, backend, credentials, identity, saml, audit
//! state                        long-lived stores -> saml, identity, credentials
//! backend, saml               -> credentials, identity; identity -> scope
//! cache                       -> backend, config, telemetry, civil_time (stage 6; never decides access)
//! credentials -> aws -> config -> scope; audit, telemetry, civil_time, tokens are leaves
//! ```
//!
//! `web` (connection info, response bodies, bounded reads, header and query parsers) is neutral
//! plumbing every HTTP-speaking layer may use; it imports nothing of the crate. Lower modules
//! never import the pipeline, server, admin, reload or app, and never see hyper request types.

pub mod admin;
pub mod app;
pub mod audit;
pub mod aws;
pub mod backend;
pub mod cache;
mod civil_time;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod image;
pub mod pipeline;
pub mod reload;
pub mod saml;
pub mod scope;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod video;
pub mod web;

pub use app::{Gateway, StartError, StartOptions};
