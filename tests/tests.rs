//! The one integration-test binary (`cargo test --test integration`): every file in tests/ is a
//! module of it, sharing `support`. One binary links the crate and its dependencies once, where
//! one binary per file linked them ~20 times.
//!
//! The tests run in parallel threads of one process. A test that changes or measures
//! process-wide state (the RLIMIT_NOFILE of the EMFILE test, the RSS of the memory test) re-runs
//! itself alone in a child process: [`support::alone_in_child_process`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod accept_errors;
mod admin_api;
mod audit;
mod binary;
mod cache;
mod cli;
mod cluster;
mod cluster_limits;
mod cluster_saml;
mod config_errors;
mod cors;
mod delegated;
mod deploy;
mod faults;
mod fs_source;
mod identity;
mod iiif;
mod iiif_browser;
mod images;
mod images_fuzz;
mod label_studio;
mod listener;
mod network;
mod objects;
mod operations;
mod pyramid;
mod rate_limits;
mod reload;
mod requests;
mod s3_backend;
mod s3_requests;
mod saml;
mod saml_response;
mod use_window;
mod video;
mod video_frames;
mod video_hls;
mod video_hls_browser;
mod video_hostile;
mod video_web;
