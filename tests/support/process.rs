//! Child processes that end with the test that started them, whether it passes or panics.
//!
//! [`ChildGuard`] owns a spawned child. On drop (or [`ChildGuard::stop`]) it sends SIGTERM,
//! waits a bounded time, falls back to SIGKILL, and reaps the child. Before that it notes the
//! child's descendants (from /proc), and afterwards makes sure none of them outlives it: a
//! process such as chromedriver leaves its chromium behind when it dies, and orphans are
//! reparented away from us, so they cannot be found by their parent any more. Children spawned
//! with [`ChildGuard::spawn_group`] lead their own process group, which is killed as a whole.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// How long a child has to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long the descendants of a stopped child have to go before they get SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// A spawned child process, stopped and reaped on drop.
pub struct ChildGuard {
    child: Child,
    /// For messages: what the child is.
    name: String,
    /// The child leads its own process group (`process_group(0)`).
    group: bool,
    stopped: bool,
}

impl ChildGuard {
    /// Spawn `command` (panics with `name` if it cannot start).
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        ChildGuard::start(name, command, false)
    }

    /// Spawn `command` as the leader of a new process group, so everything it starts (and does
    /// not move elsewhere) is stopped with it.
    pub fn spawn_group(name: &str, command: &mut Command) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        ChildGuard::start(name, command.process_group(0), true)
    }

    fn start(name: &str, command: &mut Command, group: bool) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_owned(),
            group,
            stopped: false,
        }
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; reaped either way. Then every
    /// process that descended from it (and its process group) is gone too, by SIGKILL after
    /// [`ORPHAN_GRACE`] if need be. Never panics (it runs in drop, maybe while unwinding); what it
    /// cannot clean up it reports on stderr. A second call does nothing.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = Pid::from_child(&self.child);
        let descendants = descendants(pid.as_raw_nonzero().get());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + TERM_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();

        let deadline = Instant::now() + ORPHAN_GRACE;
        let alive = |procs: &[Proc]| procs.iter().copied().filter(|p| p.alive()).count();
        while alive(&descendants) > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if self.group {
            // The leader is reaped; the group id stays valid while any member lives.
            let _ = kill_process_group(pid, Signal::KILL);
        }
        for p in &descendants {
            if p.alive() {
                let _ = Pid::from_raw(p.pid).map(|pid| kill_process(pid, Signal::KILL));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(&descendants) > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let left: Vec<i32> = descendants
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if !left.is_empty() {
            eprintln!(
                "{}: descendants still running after SIGKILL: {left:?}",
                self.name
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    /// Still running (a zombie has finished: only its parent's reaping is left).
    fn alive(self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z')
    }
}

struct Stat {
    state: char,
    ppid: i32,
    start: u64,
}

/// `/proc/PID/stat`: state, parent and start time (fields 3, 4 and 22; the command name in
/// field 2 may hold spaces and parentheses, so fields are counted from its closing `)`).
fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process below `root` in the process tree now.
fn descendants(root: i32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(i32, Stat)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, s) in &all {
            if s.ppid == parent {
                found.push(Proc {
                    pid: *pid,
                    start: s.start,
                });
                parents.push(*pid);
            }
        }
    }
    found
}
