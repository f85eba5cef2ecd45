//! bucketgate: a TLS reverse proxy and storage gateway that serves bucket objects to labeling UIs
//! without making buckets public or handing out bucket credentials.
//!
//! The crate is a library with a thin binary (`main.rs`) so that tests and benches drive the same
//! code. Dependency direction: `server -> pipeline -> {backend, ...}`; lower modules never import
//! the pipeline or hyper request types. See `pipeline/mod.rs` for the request lifecycle.

pub mod admin;
pub mod app;
pub mod audit;
pub mod aws;
pub mod backend;
mod civil_time;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod pipeline;
pub mod reload;
pub mod saml;
pub mod scope;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod web;

pub use app::{Gateway, StartError, StartOptions};
