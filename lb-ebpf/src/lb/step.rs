//! What a step of the packet's path returns: [`Step`], one word.
//!
//! The convention, stated once (Katran's "XDP action or
//! FURTHER_PROCESSING", Cilium's `IS_ERR(ret)`): a step returns either a
//! verdict (an [`Outcome`], which the entry counts and turns into an XDP
//! action) or the next step to take ([`Step::CHOOSE`], [`Step::FORWARD`],
//! [`Step::TOO_BIG`]). The step that writes the backend choice marks its
//! answer [`Step::with_choice`]; the entry reads the mark once
//! ([`Step::has_choice`]: the choice's connection-table event counts with
//! the outcome), takes it off ([`Step::without_choice`]) and goes on:
//!
//! ```text
//! parse (v4, v6) ── CHOOSE ──► choose ── FORWARD + mark ──► forward ── TOO_BIG ──► too_big
//!    └── (IPv4 shortcut) FORWARD / TOO_BIG / verdict + mark ──┘
//! any step ── verdict ──► the entry: counted, turned into an XDP action
//! ```
//!
//! A plain `u32` underneath (`#[repr(transparent)]`): subprograms return a
//! scalar in r0, where a returned struct would be a pointer into the
//! callee's stack, which the verifier refuses.
//!
//! | value | meaning |
//! |---|---|
//! | below 0x100 | verdict: an [`Outcome`]'s index |
//! | 0x100 | [`Step::CHOOSE`]: the packet is parsed, choose is next |
//! | 0x101 | [`Step::FORWARD`]: the choice is written, forward is next |
//! | 0x102 | [`Step::TOO_BIG`]: it would not fit once encapsulated |
//! | + 0x200 | the mark of [`Step::with_choice`]: the choice is written |

use lb_common::Outcome;

/// A step's answer: a verdict or the next step (see the module's table).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Step(u32);

/// The mark of an answer given once the backend choice is written.
const CHOSEN: u32 = 0x200;

impl Step {
    /// The packet is parsed and written whole: choose is next.
    pub(super) const CHOOSE: Step = Step(0x100);
    /// The choice is written: forward is next.
    pub(super) const FORWARD: Step = Step(0x101);
    /// The packet would not fit once encapsulated (`Choice::mtu_left` says
    /// how many bytes it may have): the "too big" rule is next.
    pub(super) const TOO_BIG: Step = Step(0x102);

    /// The verdict `outcome`, before any choice.
    #[inline(always)]
    pub(super) const fn verdict(outcome: Outcome) -> Step {
        Step(outcome as u32)
    }

    /// The verdict of a `Result` whose both sides carry an outcome (`Err`
    /// taken by `?` on a parse or lookup failure).
    #[inline(always)]
    pub(super) const fn of(result: Result<Outcome, Outcome>) -> Step {
        match result {
            Ok(outcome) | Err(outcome) => Step::verdict(outcome),
        }
    }

    /// The step of a `Result` whose `Err` is a verdict taken by `?`.
    #[inline(always)]
    pub(super) const fn or_verdict(result: Result<Step, Outcome>) -> Step {
        match result {
            Ok(step) => step,
            Err(outcome) => Step::verdict(outcome),
        }
    }

    /// This answer, given once the choice is written.
    #[inline(always)]
    pub(super) const fn with_choice(self) -> Step {
        Step(self.0 | CHOSEN)
    }

    /// Whether the choice was written before this answer.
    #[inline(always)]
    pub(super) const fn has_choice(self) -> bool {
        self.0 & CHOSEN != 0
    }

    /// This answer without the mark of [`Step::with_choice`].
    #[inline(always)]
    pub(super) const fn without_choice(self) -> Step {
        Step(self.0 & !CHOSEN)
    }

    /// The verdict's outcome, of an answer without the mark (a next step
    /// has none: `DropMalformed`, which the entry never sees, since it
    /// takes every next step first).
    #[inline(always)]
    pub(super) const fn outcome(self) -> Outcome {
        match Outcome::from_index(self.0) {
            Some(outcome) => outcome,
            None => Outcome::DropMalformed,
        }
    }
}
