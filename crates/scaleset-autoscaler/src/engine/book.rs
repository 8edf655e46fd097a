//! The engine's books: one record per runner, and the only code that changes a record's
//! phase ([`Book::apply`], through [`lifecycle::next`](super::lifecycle::next())). Pure: no
//! I/O, no runtime; the caller passes the time and executes the actions it gets back.

use std::collections::BTreeMap;
use std::time::Duration;

use actions_scaleset::RunnerId;
use tokio::time::Instant;

use super::lifecycle::{self, Action, Event, Next, Phase};

/// One runner's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Runner id (0 until minted, or for a leftover whose id was never recorded).
    pub id: RunnerId,
    /// Its phase.
    pub phase: Phase,
    /// When it entered the phase.
    pub since: Instant,
    /// A removal of its registration is in flight.
    pub removing: bool,
    /// A stop is in flight.
    pub stopping: bool,
    /// A failed removal or stop is retried at this time.
    pub retry_at: Option<Instant>,
    /// Failed removals or stops in a row (in this phase).
    pub retries: u32,
    /// The provisioner has it (created here, or adopted).
    pub created: bool,
    /// When the record was made (its start began, or it was found): runner lifetimes in the
    /// log count from here.
    pub born: Instant,
}

impl Record {
    /// A record in `phase` from `now`.
    pub fn new(id: RunnerId, phase: Phase, now: Instant) -> Record {
        Record {
            id,
            phase,
            since: now,
            removing: false,
            stopping: false,
            retry_at: None,
            retries: 0,
            created: false,
            born: now,
        }
    }

    /// Whether a removal or stop of it is in flight.
    pub fn in_flight(&self) -> bool {
        self.removing || self.stopping
    }
}

/// What [`Book::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The phase before.
    pub from: Phase,
    /// Where it went.
    pub next: Next,
    /// The actions for the caller to execute, in order. `Deregister` and `Stop` appear only
    /// when none is in flight already; `RetryLater` and `ResetFailures` are done already
    /// and never appear; `ReportOutdated` appears only the first time.
    pub actions: Vec<Action>,
    /// The record as it was (for its id and whether the provisioner had it).
    pub record: Record,
}

/// The state of one scale set's runners.
#[derive(Clone, Debug, Default)]
pub struct Book {
    /// Every runner, by name.
    pub runners: BTreeMap<String, Record>,
    /// Latest `totalAssignedJobs`.
    pub assigned: i64,
    /// Shutting down: the target is 0.
    pub stopping: bool,
    /// Failed starts in a row.
    pub start_failures: u32,
    /// No start before this.
    pub backoff_until: Option<Instant>,
    /// A runner reported itself too old: no more starts.
    pub outdated: bool,
    /// Failed starts, ever.
    pub failures_total: u64,
}

/// The delay before start attempt `failures + 1`: 1 s doubling to 5 min, then jittered
/// down by up to a half so that many scale sets failing at once do not retry in step.
pub fn start_backoff(failures: u32, jitter: f64) -> Duration {
    jittered(
        Duration::from_secs(1u64 << failures.min(9)),
        Duration::from_secs(300),
        jitter,
    )
}

/// The delay before retrying a failed removal or stop: 1 s doubling to 60 s, jittered.
pub fn retry_backoff(retries: u32, jitter: f64) -> Duration {
    jittered(
        Duration::from_secs(1u64 << retries.min(6)),
        Duration::from_secs(60),
        jitter,
    )
}

/// `base` capped at `cap`, scaled by `1 - jitter / 2` (`jitter` in `0..=1`).
fn jittered(base: Duration, cap: Duration, jitter: f64) -> Duration {
    base.min(cap).mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

impl Book {
    /// The runners in `phase`.
    pub fn count(&self, phase: Phase) -> usize {
        self.runners.values().filter(|r| r.phase == phase).count()
    }

    /// Runners that count toward the target.
    pub fn capacity(&self) -> usize {
        self.runners
            .values()
            .filter(|r| r.phase.is_capacity())
            .count()
    }

    /// Applies `event` to the runner `name` at `now`; `jitter` (in `0..=1`) spreads
    /// backoffs. `None` when there is no such runner. A removal's or stop's result always
    /// clears its in-flight mark, even when the event changes nothing else.
    pub fn apply(
        &mut self,
        name: &str,
        event: Event,
        now: Instant,
        jitter: f64,
    ) -> Option<Applied> {
        let r = self.runners.get_mut(name)?;
        match event {
            Event::RemovalDone | Event::RemovalRefused | Event::RemovalFailed => r.removing = false,
            Event::StopDone | Event::StopFailed => r.stopping = false,
            _ => {}
        }
        let before = r.clone();
        let Some(t) = lifecycle::next(r.phase, event) else {
            return Some(Applied {
                from: before.phase,
                next: Next::To(before.phase),
                actions: Vec::new(),
                record: before,
            });
        };
        if let Next::To(p) = t.next
            && p != r.phase
        {
            r.phase = p;
            r.since = now;
            r.retry_at = None;
            r.retries = 0;
        }
        let mut actions = Vec::new();
        for &a in t.actions {
            match a {
                Action::Deregister if !r.removing => {
                    r.removing = true;
                    r.retry_at = None;
                    actions.push(a);
                }
                Action::Stop if !r.stopping => {
                    r.stopping = true;
                    r.retry_at = None;
                    actions.push(a);
                }
                Action::Deregister | Action::Stop => {}
                Action::RetryLater => {
                    r.retry_at = Some(now + retry_backoff(r.retries, jitter));
                    r.retries = r.retries.saturating_add(1);
                }
                Action::Create => actions.push(a),
                Action::CountFailure => {
                    self.failures_total += 1;
                    let delay = start_backoff(self.start_failures, jitter);
                    self.start_failures = self.start_failures.saturating_add(1);
                    self.backoff_until = Some(now + delay);
                    actions.push(a);
                }
                Action::ResetFailures => {
                    self.start_failures = 0;
                    self.backoff_until = None;
                }
                Action::ReportOutdated => {
                    if !self.outdated {
                        self.outdated = true;
                        actions.push(a);
                    }
                }
            }
        }
        if t.next == Next::Gone {
            self.runners.remove(name);
        }
        Some(Applied {
            from: before.phase,
            next: t.next,
            actions,
            record: before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::ExitKind;

    fn book_with(name: &str, phase: Phase, now: Instant) -> Book {
        let mut b = Book::default();
        b.runners
            .insert(name.into(), Record::new(RunnerId::new(7), phase, now));
        b
    }

    #[test]
    fn a_second_removal_is_not_started_while_one_is_in_flight() {
        let now = Instant::now();
        let mut b = book_with("r", Phase::Removing, now);
        b.runners.get_mut("r").expect("present").removing = true;
        // The runner exits while its removal is in flight: no second removal.
        let a = b
            .apply("r", Event::Exited(ExitKind::Success), now, 0.0)
            .expect("known");
        assert_eq!(a.next, Next::To(Phase::Deregistering));
        assert!(a.actions.is_empty(), "{:?}", a.actions);
        // The removal fails: retried later, with backoff; the record stays.
        let a = b.apply("r", Event::RemovalFailed, now, 0.0).expect("known");
        assert!(a.actions.is_empty());
        let r = &b.runners["r"];
        assert!(!r.removing);
        assert_eq!(r.retry_at, Some(now + Duration::from_secs(1)));
        // Due: the retry deregisters; done: the record goes.
        let a = b.apply("r", Event::RetryRemoval, now, 0.0).expect("known");
        assert_eq!(a.actions, vec![Action::Deregister]);
        let a = b.apply("r", Event::RemovalDone, now, 0.0).expect("known");
        assert_eq!(a.next, Next::Gone);
        assert!(b.runners.is_empty());
    }

    #[test]
    fn failed_starts_back_off_exponentially_capped_and_reset_on_a_good_start() {
        let now = Instant::now();
        let mut b = Book::default();
        let mut delays = Vec::new();
        for i in 0..12 {
            let name = format!("r{i}");
            b.runners.insert(
                name.clone(),
                Record::new(RunnerId::new(1), Phase::Starting, now),
            );
            b.apply(&name, Event::FailedToStart, now, 0.0)
                .expect("known");
            delays.push(b.backoff_until.expect("backing off") - now);
        }
        assert_eq!(delays[0], Duration::from_secs(1));
        assert_eq!(delays[1], Duration::from_secs(2));
        assert_eq!(delays[5], Duration::from_secs(32));
        assert_eq!(delays[11], Duration::from_secs(300), "capped");
        assert_eq!(b.failures_total, 12);
        // Jitter only ever shortens, by at most a half.
        assert_eq!(start_backoff(3, 1.0), Duration::from_secs(4));
        b.runners.insert(
            "ok".into(),
            Record::new(RunnerId::new(1), Phase::Starting, now),
        );
        b.apply("ok", Event::Running, now, 0.0).expect("known");
        assert_eq!((b.start_failures, b.backoff_until), (0, None));
    }

    #[test]
    fn outdated_is_reported_once() {
        let now = Instant::now();
        let mut b = book_with("a", Phase::Idle, now);
        b.runners
            .insert("b".into(), Record::new(RunnerId::new(8), Phase::Idle, now));
        let a = b
            .apply("a", Event::Exited(ExitKind::Outdated), now, 0.0)
            .expect("known");
        assert_eq!(a.actions, vec![Action::ReportOutdated, Action::Deregister]);
        let a = b
            .apply("b", Event::Exited(ExitKind::Outdated), now, 0.0)
            .expect("known");
        assert_eq!(a.actions, vec![Action::Deregister]);
        assert!(b.outdated);
        assert_eq!(b.start_failures, 0, "not a start failure");
    }
}
