//! Who may load the machine while a test with deadlines runs.
//!
//! The tests of one binary run two at a time on this project's 2 cores.
//! A few check what happens within a deadline a loaded machine can miss:
//! a Hello dripped until the server gives up on it, devices that wait up
//! to a few hundred milliseconds for another's path MTU. Most tests load
//! the machine about as much as those can bear; the fault tests on the
//! Cassandra cluster do not: three JVMs replaying their commit logs and
//! rebuilding their state after SIGKILL take both cores for seconds. So
//! a test with deadlines holds the machine shared, and a cluster fault
//! test holds it whole: the two never overlap, and either still runs
//! beside every other test.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static MACHINE: RwLock<()> = RwLock::new(());

/// A test's hold of the machine, kept for the whole test, across its
/// awaits: each test runs on a runtime of its own, so no other task
/// waits on the same threads for it.
#[derive(Debug)]
#[must_use = "the machine is held only while this lives"]
pub struct Held {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _whole: Option<RwLockWriteGuard<'static, ()>>,
}

/// Held by a test whose checks have deadlines a loaded machine can miss.
pub fn with_deadlines() -> Held {
    Held {
        _shared: Some(MACHINE.read()),
        _whole: None,
    }
}

/// Held by a test that loads the machine past what those deadlines bear.
pub fn whole() -> Held {
    Held {
        _shared: None,
        _whole: Some(MACHINE.write()),
    }
}
