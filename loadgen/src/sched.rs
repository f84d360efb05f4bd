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
//! (docs/devices/loadgen.md): in a pair of runs of 4 M events from 100
//! devices flat out, the server's threads were preempted 5,668 times
//! instead of 20,353; 10 pairs of such runs reached 984 k events/s
//! against 931 k (medians, higher in 8), the server's CPU an event little
//! changed (1.39 against 1.41 µs); 10,000 devices at 5 events/s cost the
//! server 14.3, 14.8 and 12.2 µs an event against 15.6, 15.6 and 13.5.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the kernel refused `SCHED_BATCH` for some thread, so the
/// report does not claim a policy that did not take, and the warning is
/// logged once, not once a thread.
static BATCH_REFUSED: AtomicBool = AtomicBool::new(false);

/// The policy the device threads run under, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSched {
    /// The kernel's default (`SCHED_OTHER`): a woken device thread may
    /// preempt the server.
    Normal,
    /// `SCHED_BATCH`: the same share of the CPU, no wakeup preemption.
    Batch,
}

impl DeviceSched {
    /// Puts the calling thread under this policy. Returns whether it took;
    /// where it did not (a platform without `SCHED_BATCH`, a kernel or
    /// sandbox that refuses the call), the thread keeps the policy it had,
    /// and the first refusal of `batch` is logged.
    pub fn apply_to_current_thread(self) -> bool {
        let took = set_policy(self);
        if !took && self == DeviceSched::Batch && !BATCH_REFUSED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the kernel refused SCHED_BATCH for the device threads; they run as normal"
            );
        }
        took
    }

    /// What the device threads ran under: this policy, or `Normal` where
    /// it was `Batch` and the kernel refused it for any thread.
    pub fn effective(self) -> DeviceSched {
        if self == DeviceSched::Batch && BATCH_REFUSED.load(Ordering::Relaxed) {
            DeviceSched::Normal
        } else {
            self
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // one FFI call std does not wrap; see SAFETY
fn set_policy(policy: DeviceSched) -> bool {
    let policy = match policy {
        DeviceSched::Normal => libc::SCHED_OTHER,
        DeviceSched::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid
    // sched_param (priority 0, as both policies require) that lives
    // across the call, which only reads it.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_policy(policy: DeviceSched) -> bool {
    policy == DeviceSched::Normal
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
    fn normal_puts_a_batch_thread_back() {
        let (batch, normal) = std::thread::spawn(|| {
            assert!(DeviceSched::Batch.apply_to_current_thread());
            let batch = policy_of_current_thread();
            assert!(DeviceSched::Normal.apply_to_current_thread());
            (batch, policy_of_current_thread())
        })
        .join()
        .expect("the thread ran");
        assert_eq!(batch, libc::SCHED_BATCH);
        assert_eq!(normal, libc::SCHED_OTHER);
        assert_eq!(DeviceSched::Batch.effective(), DeviceSched::Batch);
        assert_eq!(DeviceSched::Normal.effective(), DeviceSched::Normal);
    }
}
