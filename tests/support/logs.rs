//! Log capture for tests: the WARN (and worse) events of the current thread's subscriber, as
//! JSON lines. A `#[tokio::test]` runs the gateway on its own thread, so its events land here.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

/// Log lines at WARN and above, as JSON, for one test (the gateway runs on the test's thread).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

impl CapturedLogs {
    pub fn start() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::WARN)
            .with_writer(logs.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The WARN events that report a configuration fault, parsed.
    pub fn config_faults(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| {
                v["level"] == "WARN"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("configuration fault"))
            })
            .collect()
    }

    /// Clears what was captured so far.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}
