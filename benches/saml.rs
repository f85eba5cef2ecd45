#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Criterion bench for what a SAML session costs a request after login: stage 2 finds the
//! session cookie among the request's cookies, looks the session up (SHA-256 of the id, one
//! read-locked map lookup among 10 000 live sessions), and the fetch picks the user's own
//! credentials for a `saml` source. No STS call, no I/O. Target (issue 5): < 2 µs.

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use bucketgate::backend::Caller;
use bucketgate::credentials::SessionCredentials;
use bucketgate::identity::use_window::UseWindows;
use bucketgate::identity::{Principal, Scope, TokenUse};
use bucketgate::pipeline::auth::SESSION_COOKIE;
use bucketgate::pipeline::identity::{Sessions, authenticate_request};
use bucketgate::saml::session::{AnySessionStore, Session, SessionStore as _};
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use http::header::COOKIE;

/// Live sessions in the store while measuring.
const SESSIONS: usize = 10_000;

fn session(n: usize, expires: SystemTime) -> Session {
    let arn = format!("arn:aws:sts::123456789012:assumed-role/Labeler/user{n}");
    let credentials = SessionCredentials {
        credentials: Credentials::new(
            format!("ASIA{n:016}"),
            "secret",
            Some("token".to_owned()),
            Some(expires),
            "bench",
        ),
        expires,
        assumed_role_arn: arn.clone(),
        subject: Some(format!("user{n}@corp.example")),
    };
    let principal = Principal::saml_session_for_bench(
        arn,
        "annotator".to_owned(),
        "labeling".to_owned(),
        vec![Scope::parse("assets:labels/").unwrap()],
        0,
    );
    Session::new(principal, credentials, expires)
}

/// Poll a future that never waits (the session path of stage 2 does no I/O) to completion.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the in-memory session store must not wait"),
    }
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(3600);
    let store = AnySessionStore::memory(SESSIONS * 2);
    let mut ids = Vec::new();
    for n in 0..SESSIONS {
        ids.push(ready(store.create(session(n, expires), now)).unwrap());
    }
    let id = ids[SESSIONS / 2].cookie_value().to_owned();
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        format!("theme=dark; {SESSION_COOKIE}={id}; _ga=GA1.2.3")
            .parse()
            .unwrap(),
    );
    let sessions = Sessions {
        store: &store,
        cookie_name: SESSION_COOKIE,
        now,
    };
    let windows = UseWindows::memory();
    let at = TokenUse {
        client: std::net::Ipv4Addr::LOCALHOST.into(),
        windows: &windows,
    };

    c.bench_function("saml/session_lookup_and_credential_selection", |b| {
        b.iter(|| {
            let authenticated = ready(authenticate_request(
                None,
                Some(sessions),
                black_box(&headers),
                None,
                0,
                at,
            ))
            .unwrap();
            let caller = authenticated
                .user_credentials()
                .map_or(Caller::Gateway, Caller::User);
            black_box((&caller, authenticated.principal().role().len()));
        })
    });

    c.bench_function("saml/session_store_get", |b| {
        b.iter(|| black_box(ready(store.get(black_box(&id), now)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
