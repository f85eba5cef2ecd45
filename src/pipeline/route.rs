//! The route of a request, parsed once from its method, path and query by
//! [`Pipeline::handle`](super::Pipeline::handle) and read by every stage that depends on it: the
//! route label of the metrics and the span, the network stage's per-source lists, the `/auth/`
//! dispatch, the CORS preflight and the object stage.
//!
//! Parsing never refuses: a path or query the object stage refuses is kept as that refusal and
//! reported only where the object stage runs (after the network stage, the `/auth/` routes and
//! the CORS preflight), so the order of 400s, 403s and 404s is the lifecycle's. The network stage
//! reads the source segment as written (still percent-encoded): it runs before any key work.
//!
//! Adding a route is one [`Route`] variant with its parser here and one match arm in
//! `Pipeline::run`; nothing else dispatches on the path. The IIIF routes are [`Route::Iiif`] (an
//! object route whose target asks for a derived representation) and [`Route::IiifBase`] (the
//! redirect to `info.json`); the video routes are [`Route::Video`] (an object route whose
//! target asks for a video part).

use http::Method;

use super::auth::AuthRoute;
use super::plan::{self, PlanError, Target};

/// The path prefix of the object route.
pub const OBJECT_PREFIX: &str = "/o/";
/// The path prefix of the IIIF Image API 3.0 routes.
pub const IIIF_PREFIX: &str = "/iiif/3/";
/// The path prefix of the video routes.
pub const VIDEO_PREFIX: &str = "/v/";

/// What a request asks for.
#[derive(Debug)]
pub enum Route {
    /// `/o/{source}/{key...}`: one object, as stored.
    Object(ObjectRoute),
    /// `/iiif/3/{source}/{key}/info.json` and `/iiif/3/{source}/{key}/{region}/{size}/
    /// {rotation}/{quality}.{format}`: a derived image, through the same stages as an object.
    Iiif(ObjectRoute),
    /// `/iiif/3/{source}/{key}`: the image's base URI, redirected (303) to its `info.json`;
    /// nothing is read or authorized for it. Holds the redirect's path (or the key's 400).
    IiifBase {
        source: String,
        info: Result<String, PlanError>,
    },
    /// `/v/{source}/{key}/{tail...}`: a video part (`info.json`, a poster, a frame, `web.mp4`,
    /// HLS, the sprite), through the same stages as an object.
    Video(ObjectRoute),
    /// `/auth/...`: the SAML service provider's routes (login, ACS, session, logout).
    Auth(AuthRoute),
    /// Anything else: 404 once the network stage has let it through.
    NotFound,
}

/// An `/o/` request: the source segment as written, and the result of checking its key and query
/// (reported by the object stage, not before).
#[derive(Debug)]
pub struct ObjectRoute {
    source: Option<String>,
    target: Result<Target, PlanError>,
    method: ObjectMethod,
}

/// The methods of the object route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectMethod {
    Get,
    Head,
    /// Anything else: 405 after the key and query checks (a CORS preflight is answered before).
    Other,
}

impl Route {
    /// Parse a request's route. `path` and `query` are raw (still percent-encoded).
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Route {
        if let Some(rest) = path.strip_prefix(OBJECT_PREFIX) {
            let method = match *method {
                Method::GET => ObjectMethod::Get,
                Method::HEAD => ObjectMethod::Head,
                _ => ObjectMethod::Other,
            };
            return Route::Object(ObjectRoute {
                source: rest.split_once('/').map(|(source, _)| source.to_owned()),
                target: plan::parse_object(path, query),
                method,
            });
        }
        if let Some(rest) = path.strip_prefix(IIIF_PREFIX) {
            let source = rest.split('/').next().unwrap_or_default().to_owned();
            let method = match *method {
                Method::GET => ObjectMethod::Get,
                Method::HEAD => ObjectMethod::Head,
                _ => ObjectMethod::Other,
            };
            return match plan::parse_iiif(path, query) {
                Ok(plan::IiifPath::Base { key }) => Route::IiifBase {
                    source,
                    info: key.map(|_| format!("{path}/info.json")),
                },
                Ok(plan::IiifPath::Target(target)) => Route::Iiif(ObjectRoute {
                    source: Some(source),
                    target: Ok(target),
                    method,
                }),
                Err(e) => Route::Iiif(ObjectRoute {
                    source: Some(source),
                    target: Err(e),
                    method,
                }),
            };
        }
        if let Some(rest) = path.strip_prefix(VIDEO_PREFIX) {
            let method = match *method {
                Method::GET => ObjectMethod::Get,
                Method::HEAD => ObjectMethod::Head,
                _ => ObjectMethod::Other,
            };
            return Route::Video(ObjectRoute {
                source: rest.split_once('/').map(|(source, _)| source.to_owned()),
                target: plan::parse_video(path, query),
                method,
            });
        }
        if path.starts_with(super::auth::AUTH_PREFIX) {
            return Route::Auth(AuthRoute::parse(path));
        }
        Route::NotFound
    }

    /// The bounded `route` label of metrics, the span and the audit record.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Object(_) => "object",
            Route::Iiif(_) | Route::IiifBase { .. } => "iiif",
            Route::Video(_) => "video",
            Route::Auth(_) => "auth",
            Route::NotFound => "other",
        }
    }

    /// The source segment as written (not decoded), for the network stage's per-source lists.
    pub fn network_source(&self) -> Option<&str> {
        match self {
            Route::Object(object) | Route::Iiif(object) | Route::Video(object) => {
                object.source.as_deref()
            }
            Route::IiifBase { source, .. } => Some(source),
            Route::Auth(_) | Route::NotFound => None,
        }
    }
}

impl ObjectRoute {
    /// The object stage's parse: key and query checks (400s), the route's 404, then the method
    /// (405). Returns the target and whether only the head is wanted.
    pub fn into_target(self) -> Result<(Target, bool), super::error::Error> {
        let target = self.target?;
        match self.method {
            ObjectMethod::Get => Ok((target, false)),
            ObjectMethod::Head => Ok((target, true)),
            ObjectMethod::Other => Err(super::error::Error::MethodNotAllowed),
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used)] // tests may panic and unwrap; src/ may not
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Route::parse(&Method::GET, path, query)
    }

    #[test]
    fn the_network_stage_reads_the_raw_source_segment() {
        assert_eq!(route("/o/photos/a/b.jpg").network_source(), Some("photos"));
        assert_eq!(route("/o/ph%6ftos/a").network_source(), Some("ph%6ftos"));
        assert_eq!(route("/o/photos").network_source(), None);
        assert_eq!(route("/healthz").network_source(), None);
        // A refused key or query still names its source for the network stage.
        assert_eq!(route("/o/photos/%2e%2e").network_source(), Some("photos"));
        assert_eq!(route("/o/photos/a?x=1").network_source(), Some("photos"));
    }

    #[test]
    fn labels() {
        assert_eq!(route("/o/photos/a").label(), "object");
        assert_eq!(route("/o/photos").label(), "object");
        assert_eq!(route("/auth/saml/login").label(), "auth");
        assert_eq!(route("/").label(), "other");
    }

    #[test]
    fn iiif_routes_take_one_key_segment() {
        let target = |path: &str| match route(path) {
            Route::Iiif(o) => o.into_target().map(|(t, _)| t),
            other => panic!("{path}: {other:?}"),
        };
        let t = target("/iiif/3/photos/a%2Fb.jpg/info.json").unwrap();
        assert_eq!((t.source(), t.key()), ("photos", "a/b.jpg"));
        assert_eq!(t.representation(), &plan::Representation::IiifInfo);
        let t = target("/iiif/3/photos/k%2D1/full/max/0/default.jpg?token=x").unwrap();
        assert_eq!((t.key(), t.token()), ("k-1", Some("x")));
        match t.representation() {
            plan::Representation::Iiif(r) => assert_eq!(r.canonical(), "full/max/0/default.jpg"),
            other => panic!("{other:?}"),
        }
        assert_eq!(route("/iiif/3/photos/k/info.json").label(), "iiif");
        assert_eq!(
            route("/iiif/3/photos/k/info.json").network_source(),
            Some("photos")
        );
        // A key with a raw slash is a path of another shape: 404.
        assert!(matches!(
            target("/iiif/3/photos/a/b/full/max/0/default.jpg"),
            Err(super::super::error::Error::Plan(PlanError::NoRoute))
        ));
        assert!(matches!(
            target("/iiif/3/photos/a/b/c"),
            Err(super::super::error::Error::Plan(PlanError::NoRoute))
        ));
        assert!(matches!(
            target("/iiif/3/photos/%2e%2e/info.json"),
            Err(super::super::error::Error::Plan(PlanError::DotSegment))
        ));
        assert!(matches!(
            target("/iiif/3/photos/k/full/max/45/default.jpg"),
            Err(super::super::error::Error::Plan(PlanError::IiifParameter {
                param: "rotation",
                ..
            }))
        ));
        match route("/iiif/3/photos/a%2Fb") {
            Route::IiifBase { source, info } => {
                assert_eq!(source, "photos");
                assert_eq!(info.unwrap(), "/iiif/3/photos/a%2Fb/info.json");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn video_routes_take_one_key_segment() {
        let target = |path: &str| match route(path) {
            Route::Video(o) => o.into_target().map(|(t, _)| t),
            other => panic!("{path}: {other:?}"),
        };
        let t = target("/v/clips/a%2Fb.mp4/info.json?token=x").unwrap();
        assert_eq!(
            (t.source(), t.key(), t.token()),
            ("clips", "a/b.mp4", Some("x"))
        );
        assert_eq!(
            t.representation(),
            &plan::Representation::Video(crate::video::VideoRequest::Info)
        );
        let t = target("/v/clips/k/poster.jpg?t=5.000&w=320").unwrap();
        assert_eq!(
            t.representation().cache_label(),
            "video:poster.jpg?t=5&w=320"
        );
        assert_eq!(
            t.representation().class(),
            crate::identity::Representation::Derived
        );
        let t = target("/v/clips/k/hls/3.ts").unwrap();
        assert_eq!(
            t.representation().params().as_deref(),
            Some("video:hls/3.ts")
        );
        assert_eq!(route("/v/clips/k/web.mp4").label(), "video");
        assert_eq!(route("/v/clips/k/web.mp4").network_source(), Some("clips"));
        assert_eq!(
            route("/v/cl%69ps/k/web.mp4").network_source(),
            Some("cl%69ps")
        );
        let no_route = |path: &str| {
            assert!(
                matches!(
                    target(path),
                    Err(super::super::error::Error::Plan(PlanError::NoRoute))
                ),
                "{path}"
            );
        };
        // A key with a raw slash is a tail of another shape: 404.
        no_route("/v/clips/a/b/info.json");
        no_route("/v/clips/k");
        no_route("/v/clips/k/");
        no_route("/v/clips/k/nothing");
        no_route("/v//k/info.json");
        no_route("/v/clips");
        assert!(matches!(
            target("/v/clips/%2e%2e/info.json"),
            Err(super::super::error::Error::Plan(PlanError::DotSegment))
        ));
        for (path, param) in [
            ("/v/clips/k/poster.jpg?t=-1", "t"),
            ("/v/clips/k/poster.jpg?w=1", "w"),
            ("/v/clips/k/frame/%2B1.jpg", "n"),
            ("/v/clips/k/frame/1.jpg?t=1", "query"),
            ("/v/clips/k/info.json?x=1", "query"),
        ] {
            match target(path) {
                Err(super::super::error::Error::Plan(PlanError::VideoParameter {
                    param: p,
                    ..
                })) => assert_eq!(p, param, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(matches!(
            target("/v/clips/k/poster.jpg?t=1&t=2"),
            Err(super::super::error::Error::Plan(
                PlanError::RepeatedParameter
            ))
        ));
        assert!(matches!(
            target("/v/clips/k/info.json?token=a&token=b"),
            Err(super::super::error::Error::Plan(
                PlanError::RepeatedParameter
            ))
        ));
        let Route::Video(o) = Route::parse(&Method::HEAD, "/v/clips/k/web.mp4", None) else {
            panic!("not a video route");
        };
        assert!(o.into_target().unwrap().1);
    }

    #[test]
    fn key_errors_come_before_the_method() {
        let Route::Object(o) = Route::parse(&Method::POST, "/o/s/%2e%2e", None) else {
            panic!("not an object route");
        };
        assert!(matches!(
            o.into_target(),
            Err(super::super::error::Error::Plan(PlanError::DotSegment))
        ));
        let Route::Object(o) = Route::parse(&Method::POST, "/o/s/a", None) else {
            panic!("not an object route");
        };
        assert!(matches!(
            o.into_target(),
            Err(super::super::error::Error::MethodNotAllowed)
        ));
    }
}
