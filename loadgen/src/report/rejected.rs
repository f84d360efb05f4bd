//! What the server's refusals of acknowledged events say, code by code.
//!
//! The server gives every event it refuses on semantic grounds a code
//! (`Ack.rejected`, a `RejectCode`). The report counts them by that code
//! and explains each by what the code itself means: a cause the code does
//! not name is not offered. Issue 70: 798 refusals the server counted as
//! `count_too_late` had been blamed on the clocks, a guess from a total.

use std::collections::BTreeMap;

use tillstream_protocol::RejectCode;

use super::thousands;

/// The counts under the codes' names; a code this build does not know is
/// named `code_N`.
pub(super) fn by_name(counts: &BTreeMap<u16, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .map(|(&c, &n)| {
            let name = RejectCode::from_u16(c)
                .map_or_else(|| format!("code_{c}"), |r| r.name().to_owned());
            (name, n)
        })
        .collect()
}

/// One note per code: `<name>: <count> refused as <what the code says>`,
/// and, for a generated fleet, what that means of the generator's events.
pub(super) fn notes(by_name: &BTreeMap<String, u64>, fleet: bool) -> Vec<String> {
    by_name
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(name, &n)| {
            let count = thousands(n as f64);
            match RejectCode::ALL.into_iter().find(|c| c.name() == name) {
                Some(code) => {
                    let generated = if fleet { of_generated(code) } else { None };
                    format!(
                        "{name}: {count} refused as {}{}",
                        meaning(code),
                        generated.map(|g| format!("; {g}")).unwrap_or_default()
                    )
                }
                None => format!(
                    "{name}: {count} refused under a code unknown to this build of the loadgen \
                     (see the server's protocol/FORMAT.md)"
                ),
            }
        })
        .collect()
}

/// What the code says the refused events were (protocol `codes.rs`).
fn meaning(code: RejectCode) -> &'static str {
    match code {
        RejectCode::NonPositiveQuantity => "sale or refund lines with a quantity of zero or less",
        RejectCode::NoLines => "sales or refunds without lines",
        RejectCode::FutureTimestamp => {
            "events stamped further ahead of the server's clock than its `--max-clock-skew-s` allows"
        }
        RejectCode::ImplausibleTimestamp => {
            "events stamped before 2000-01-01 or otherwise implausibly"
        }
        RejectCode::NegativeAmount => "lines with a negative unit price, discount or tax",
        RejectCode::CountTooLate => {
            "shelf counts older than their SKU's late window: the server orders a count against \
             the movements of its SKU's last hour, and of a SKU that moves more often, against \
             its newest 1,024 movements only (its memory bound); a count that reaches it behind \
             more newer movements of its SKU than that cannot be ordered and is refused, by \
             design (docs/internals/design.md, \"Stock converges\")"
        }
        RejectCode::NegativeLevel => "shelf counts with a negative level",
        RejectCode::ZeroDelta => "stock movements with a delta of zero",
        RejectCode::WrongStore => "events naming a store that is not their device credential's",
        RejectCode::TooManyLines => "sales with more lines or tenders than the server accepts",
        RejectCode::NotPermitted => {
            "events of a kind their device's credential does not allow (a shelf sensor's sale, a \
             till's count)"
        }
        _ => "events refused under a code this build of the loadgen has no words for",
    }
}

/// What a refusal under `code` means of the generator's events, where the
/// generator's design says it (`generator` module docs).
fn of_generated(code: RejectCode) -> Option<String> {
    Some(match code {
        RejectCode::FutureTimestamp => format!(
            "the generator stamps no event more than {:.1} s past this host's clock, so the \
             server's clock is behind this host's by more than its bound less that",
            crate::generator::MAX_LEAD_US as f64 / 1e6
        ),
        RejectCode::ImplausibleTimestamp => "the generator stamps events from this host's \
             clock (an unpaced run from --events × --sim-step-us before it), so that clock, \
             or a step that long"
            .to_owned(),
        RejectCode::CountTooLate => "the generator stamps each count after every till event \
             generated before it, so a paced run the server keeps up with has none; \
             flat out (or paced faster than the server acknowledges), batches reach the server \
             in no set order, a device with --max-inflight N sends N × --batch-size events \
             ahead, and the busiest SKUs move hundreds of times a simulated second: some \
             counts of those reach it behind more than 1,024 newer movements. Fewer in flight, \
             or a --rate the server keeps up with, avoids them"
            .to_owned(),
        RejectCode::TooManyLines => "the generator's sales have at most 8 lines and 2 tenders, \
             so the server accepts fewer than that"
            .to_owned(),
        _ => "the generator makes no such events: a bug of the loadgen".to_owned(),
    })
}
