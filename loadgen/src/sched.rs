//! How the loadgen's threads share the cores with a server on the same
//! machine.
//!
//! Against `--server` on the same cores, each wakeup of a device thread
//! (an ack arrived, a timer fired) could preempt a server thread in the
//! middle of its work, and the server paid for the loadgen's scheduling:
//! context switches, cold caches, a journal group or a commit cut short.
//! Linux's `SCHED_BATCH` keeps a thread's fair share of the CPU but takes
//! away its wakeup preemption, so the device threads run when the server
//! yields or its slice ends. On 2 cores with `--server` on loopback
//! (README, "Load generator"): in a pair of runs of 4 M events from 100
//! devices flat out, the server's threads were preempted 5,668 times
//! instead of 20,353; 10 pairs of such runs reached 984 k events/s
//! against 931 k (medians, higher in 8), the server's CPU an event little
//! changed (1.39 against 1.41 µs); 10,000 devices at 5 events/s cost the
//! server 14.3 and 14.8 µs an event against 15.6 and 15.6.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the kernel refused the policy for some thread, so the report
/// does not claim a policy that did not take.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The policy the device threads run under, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSched {
    /// The default policy: a woken device thread may preempt the server.
    Normal,
    /// `SCHED_BATCH`: the same share of the CPU, no wakeup preemption.
    Batch,
}

impl DeviceSched {
    /// Puts the calling thread under this policy. Returns whether it took:
    /// a platform without `SCHED_BATCH`, or a kernel that refuses it,
    /// leaves the thread as it was.
    pub fn apply_to_current_thread(self) -> bool {
        let took = match self {
            DeviceSched::Normal => true,
            DeviceSched::Batch => set_batch(),
        };
        if !took {
            REFUSED.store(true, Ordering::Relaxed);
        }
        took
    }

    /// What the device threads ran under: this policy, or `Normal` if the
    /// kernel refused it for any thread of this process.
    pub fn as_run(self) -> DeviceSched {
        if REFUSED.load(Ordering::Relaxed) {
            DeviceSched::Normal
        } else {
            self
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // one FFI call std does not wrap; see SAFETY
fn set_batch() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid
    // sched_param that lives across the call, which only reads it.
    // Moving from SCHED_OTHER to SCHED_BATCH needs no privilege.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[allow(unsafe_code)] // reads the policy back; see SAFETY
    fn policy_of_current_thread() -> i32 {
        // SAFETY: pid 0 names the calling thread; no pointers.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn batch_takes_on_the_calling_thread_only() {
        let before = policy_of_current_thread();
        let (took, policy) = std::thread::spawn(|| {
            let took = DeviceSched::Batch.apply_to_current_thread();
            (took, policy_of_current_thread())
        })
        .join()
        .expect("the thread ran");
        assert!(took, "SCHED_BATCH needs no privilege on Linux");
        assert_eq!(policy, libc::SCHED_BATCH);
        assert_eq!(policy_of_current_thread(), before);
    }

    #[test]
    fn normal_leaves_the_thread_as_it_was() {
        let before = policy_of_current_thread();
        let policy = std::thread::spawn(|| {
            assert!(DeviceSched::Normal.apply_to_current_thread());
            policy_of_current_thread()
        })
        .join()
        .expect("the thread ran");
        assert_eq!(policy, before, "a new thread inherits its parent's policy");
    }
}
