//! The reconcile decision, pure: from the books, the settings and the time, [`plan`] says
//! how many runners to start, which events are due (deadlines, scale-down, retries) and
//! when to look again. The engine's loop executes it; the tests below run it without a
//! runtime, a simulator or a provisioner.
//!
//! # Policy
//!
//! `target = min(max_runners, min_runners + totalAssignedJobs + idle_headroom)` (0 while
//! shutting down). Capacity is the runners in a capacity phase (see
//! [`Phase::is_capacity`]); every record counts toward `max_runners`, so runners on their
//! way out hold back new ones rather than exceed the limit. Below the target, runners are
//! started unless starts are backing off after failures or a runner reported itself too
//! old, or while the removal of a runner's registration is in flight (it may be refused
//! because the runner just took a job). Above it, only idle runners are removed, the longest idle first, and only after
//! `idle_delay` (at once while shutting down); a busy runner never is.
//!
//! Deadlines: a runner not running `registration_timeout` after it was minted, or idle that
//! long while jobs wait, is broken; one that ended before its `JobCompleted` counts until
//! `exit_grace` (at once while shutting down); one whose job completed gets `finish_grace`
//! to end before it is removed and stopped.

use tokio::time::Instant;

use super::book::Book;
use super::lifecycle::{Event, Phase};
use super::settings::EngineSettings;

/// What one reconcile pass decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Runners to start.
    pub starts: usize,
    /// Events that are due, per runner, in order.
    pub events: Vec<(String, Event)>,
    /// When to plan again at the latest (`None`: only when something happens).
    pub wake_at: Option<Instant>,
    /// The target.
    pub target: usize,
    /// Runners counting toward the target, after the due events.
    pub capacity: usize,
    /// Why fewer runners than wanted are started, if so.
    pub held_back: Option<HeldBack>,
}

/// Why a plan starts fewer runners than the target asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBack {
    /// `max_runners` is reached, counting runners on their way out.
    MaxRunners,
    /// Starts back off after failures.
    Backoff,
    /// A runner reported itself too old for GitHub; no more starts until the configuration
    /// changes.
    Outdated,
}

/// `t + d`, `None` when beyond the clock (never due).
fn after(t: Instant, d: std::time::Duration) -> Option<Instant> {
    t.checked_add(d)
}

/// Plans one reconcile pass.
pub fn plan(book: &Book, s: &EngineSettings, now: Instant) -> Plan {
    let mut p = Plan::default();
    let wake = |t: Instant, p: &mut Plan| {
        p.wake_at = Some(p.wake_at.map_or(t, |w| w.min(t)));
    };
    let stopping = book.stopping;
    let target = if stopping {
        0
    } else {
        s.target(book.assigned) as usize
    };
    p.target = target;
    let on_jobs = (book.count(Phase::Busy) + book.count(Phase::Exited)) as i64;
    let jobs_wait = book.assigned > on_jobs;

    // Deadlines and retries. A runner that times out leaves the capacity (it becomes
    // lingering), so count capacity after them.
    let mut capacity = 0usize;
    for (name, r) in &book.runners {
        let deadline = match r.phase {
            Phase::Starting => Some(s.registration_timeout),
            Phase::Idle if jobs_wait && !stopping => Some(s.registration_timeout),
            Phase::Exited if stopping => Some(std::time::Duration::ZERO),
            Phase::Exited => Some(s.exit_grace),
            Phase::Finished => Some(s.finish_grace),
            _ => None,
        };
        let mut timed_out = false;
        if let Some(grace) = deadline {
            match after(r.since, grace) {
                Some(due) if due <= now => {
                    p.events.push((name.clone(), Event::Timeout));
                    timed_out = true;
                }
                Some(due) => wake(due, &mut p),
                None => {}
            }
        }
        if r.phase.is_capacity() && !timed_out {
            capacity += 1;
        }
        let retry = match r.phase {
            Phase::Removing | Phase::Deregistering => Some(Event::RetryRemoval),
            Phase::Stopping | Phase::Killing => Some(Event::RetryStop),
            _ => None,
        };
        if let (Some(retry), Some(at)) = (retry, r.retry_at)
            && !r.in_flight()
        {
            if at <= now {
                p.events.push((name.clone(), retry));
            } else {
                wake(at, &mut p);
            }
        }
    }
    p.capacity = capacity;

    // A runner whose registration is being removed may have taken a job meanwhile (the
    // service then refuses the removal, and it is busy): until the answer, it holds back a
    // start, or a runner adopted at a takeover before its `JobStarted` arrived is replaced
    // by a second one for the same job.
    let uncertain = book
        .runners
        .values()
        .filter(|r| r.phase == Phase::Removing && r.removing)
        .count();
    let wanted = target.saturating_sub(capacity + uncertain);
    if capacity < target && !stopping && wanted > 0 {
        let room = (s.max_runners as usize).saturating_sub(book.runners.len());
        if book.outdated {
            p.held_back = Some(HeldBack::Outdated);
        } else if let Some(until) = book.backoff_until.filter(|u| *u > now) {
            p.held_back = Some(HeldBack::Backoff);
            wake(until, &mut p);
        } else {
            p.starts = wanted.min(room);
            if p.starts < wanted {
                p.held_back = Some(HeldBack::MaxRunners);
            }
        }
    } else if capacity > target {
        let mut idle: Vec<(Instant, &String)> = book
            .runners
            .iter()
            .filter(|(_, r)| r.phase == Phase::Idle && !r.in_flight())
            .map(|(n, r)| (r.since, n))
            .collect();
        idle.sort();
        let mut excess = capacity - target;
        for (since, name) in idle {
            if excess == 0 {
                break;
            }
            if p.events.iter().any(|(n, _)| n == name) {
                continue;
            }
            match after(since, s.idle_delay) {
                _ if stopping => {}
                Some(due) if due <= now => {}
                Some(due) => {
                    wake(due, &mut p);
                    continue;
                }
                None => continue,
            }
            p.events.push((name.clone(), Event::ScaleDown));
            excess -= 1;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::book::Record;
    use crate::engine::lifecycle::{ExitKind, Next};
    use actions_scaleset::{RunnerId, ScaleSetId};

    fn settings() -> EngineSettings {
        let mut s = EngineSettings::new(ScaleSetId::new(1), "s");
        s.max_runners = 10;
        s.idle_delay = Duration::from_secs(60);
        s.registration_timeout = Duration::from_secs(300);
        s.exit_grace = Duration::from_secs(120);
        s.finish_grace = Duration::from_secs(60);
        s
    }

    /// A book with runners named `r0..` in the given phases, all since `at`.
    fn book(phases: &[Phase], at: Instant) -> Book {
        let mut b = Book::default();
        for (i, p) in phases.iter().enumerate() {
            b.runners.insert(
                format!("r{i}"),
                Record::new(RunnerId::new(i as i64 + 1), *p, at),
            );
        }
        b
    }

    /// Starts `n` runners in the book as the engine would (Minting records).
    fn start(b: &mut Book, n: usize, now: Instant) {
        let base = b.runners.len();
        for i in 0..n {
            b.runners.insert(
                format!("n{}", base + i),
                Record::new(RunnerId::new(0), Phase::Minting, now),
            );
        }
    }

    #[test]
    fn a_burst_starts_up_to_max_runners_and_no_more() {
        let now = Instant::now();
        let s = settings();
        let mut b = Book {
            assigned: 25,
            ..Book::default()
        };
        let p = plan(&b, &s, now);
        assert_eq!((p.target, p.starts), (10, 10));
        assert_eq!(p.held_back, None);
        start(&mut b, p.starts, now);
        let p = plan(&b, &s, now);
        assert_eq!(p.starts, 0, "the 10 minting runners are capacity");
        // Two finish: their records still hold registrations, so no replacement yet.
        for name in ["n0", "n1"] {
            b.runners.get_mut(name).expect("present").phase = Phase::Deregistering;
        }
        let p = plan(&b, &s, now);
        assert_eq!(p.starts, 0);
        assert_eq!(p.held_back, Some(HeldBack::MaxRunners));
        b.runners.remove("n0");
        assert_eq!(plan(&b, &s, now).starts, 1);
    }

    #[test]
    fn a_runner_whose_removal_is_in_flight_holds_back_a_start_until_the_answer() {
        let now = Instant::now();
        let s = settings();
        // Adopted at a takeover: its registration is being removed, "kept if it runs a job".
        let mut b = book(&[Phase::Busy, Phase::Removing], now);
        b.assigned = 2;
        b.runners.get_mut("r1").expect("present").removing = true;
        let p = plan(&b, &s, now);
        assert_eq!(
            (p.capacity, p.starts),
            (1, 0),
            "no second runner for its job yet"
        );
        // Refused (it runs a job): busy, nothing to start.
        b.runners.get_mut("r1").expect("present").phase = Phase::Busy;
        b.runners.get_mut("r1").expect("present").removing = false;
        assert_eq!(plan(&b, &s, now).starts, 0);
        // Removed (it was idle), or the removal failed and waits for its retry: replaced.
        let r1 = b.runners.get_mut("r1").expect("present");
        r1.phase = Phase::Removing;
        r1.removing = false;
        assert_eq!(plan(&b, &s, now).starts, 1);
    }

    #[test]
    fn scale_to_zero_waits_for_the_idle_delay() {
        let t0 = Instant::now();
        let s = settings();
        let b = book(&[Phase::Idle, Phase::Idle, Phase::Busy], t0);
        let p = plan(&b, &s, t0 + Duration::from_secs(10));
        assert!(p.events.is_empty());
        assert_eq!(p.wake_at, Some(t0 + s.idle_delay));
        let p = plan(&b, &s, t0 + s.idle_delay);
        assert_eq!(
            p.events,
            vec![
                ("r0".into(), Event::ScaleDown),
                ("r1".into(), Event::ScaleDown)
            ],
            "only the idle ones; the busy one is never scaled down"
        );
    }

    #[test]
    fn the_warm_pool_is_kept_and_refilled() {
        let t0 = Instant::now();
        let mut s = settings();
        s.min_runners = 2;
        let b = book(&[Phase::Idle, Phase::Idle], t0);
        let p = plan(&b, &s, t0 + Duration::from_secs(3600));
        assert_eq!(
            (p.starts, p.events.len()),
            (0, 0),
            "warm runners stay, even idle for hours"
        );
        let b = book(&[Phase::Idle, Phase::Busy], t0);
        let b = Book { assigned: 1, ..b };
        assert_eq!(plan(&b, &s, t0).starts, 1, "2 warm + 1 job = 3");
        s.idle_headroom = 1;
        assert_eq!(plan(&b, &s, t0).starts, 2);
    }

    #[test]
    fn idle_runners_above_target_go_longest_idle_first() {
        let t0 = Instant::now();
        let s = settings();
        let mut b = book(&[Phase::Idle, Phase::Idle, Phase::Idle], t0);
        b.assigned = 2;
        b.runners.get_mut("r0").expect("present").since = t0 + Duration::from_secs(5);
        let p = plan(&b, &s, t0 + Duration::from_secs(100));
        assert_eq!(p.events, vec![("r1".into(), Event::ScaleDown)]);
    }

    #[test]
    fn broken_runners_time_out_only_while_jobs_wait() {
        let t0 = Instant::now();
        let s = settings();
        let late = t0 + s.registration_timeout;
        let mut b = book(&[Phase::Idle], t0);
        b.assigned = 0;
        // A warm runner without waiting jobs is not broken...
        let mut s0 = s.clone();
        s0.min_runners = 1;
        assert!(plan(&b, &s0, late).events.is_empty());
        // ...one idle past the timeout while a job waits is, and is replaced at once.
        b.assigned = 1;
        let p = plan(&b, &s, late);
        assert_eq!(p.events, vec![("r0".into(), Event::Timeout)]);
        assert_eq!(p.capacity, 0);
        assert_eq!(p.starts, 1);
        // A runner that never reports running times out as well.
        let b = Book {
            assigned: 0,
            ..book(&[Phase::Starting], t0)
        };
        assert_eq!(
            plan(&b, &s, late).events,
            vec![("r0".into(), Event::Timeout)]
        );
    }

    #[test]
    fn a_runner_that_exits_before_job_started_is_not_replaced() {
        // One job: one runner. It runs the job and exits 0 before `JobStarted` (late, as
        // GitHub delivers it a poll later).
        let t0 = Instant::now();
        let s = settings();
        let mut b = Book {
            assigned: 1,
            ..Book::default()
        };
        let p = plan(&b, &s, t0);
        assert_eq!(p.starts, 1);
        start(&mut b, 1, t0);
        for e in [
            Event::Minted,
            Event::Running,
            Event::Exited(ExitKind::Success),
        ] {
            b.apply("n0", e, t0, 0.0).expect("known");
        }
        assert_eq!(b.runners["n0"].phase, Phase::Exited);
        let p = plan(&b, &s, t0 + Duration::from_secs(1));
        assert_eq!(p.starts, 0, "the exited runner still serves its job");
        assert_eq!(p.capacity, 1);
        // The late messages: JobStarted changes nothing, JobCompleted deregisters it; the
        // statistics then say 0 jobs.
        b.apply("n0", Event::JobStarted, t0, 0.0).expect("known");
        let a = b.apply("n0", Event::JobCompleted, t0, 0.0).expect("known");
        assert_eq!(a.next, Next::To(Phase::Deregistering));
        b.assigned = 0;
        assert_eq!(plan(&b, &s, t0).starts, 0);
        // Without JobCompleted, the exit grace ends it.
        let mut b = book(&[Phase::Exited], t0);
        b.assigned = 1;
        let p = plan(&b, &s, t0 + s.exit_grace);
        assert_eq!(p.events, vec![("r0".into(), Event::Timeout)]);
    }

    #[test]
    fn exit_code_7_stops_replacement() {
        let t0 = Instant::now();
        let s = settings();
        let mut b = Book {
            assigned: 3,
            ..Book::default()
        };
        start(&mut b, 1, t0);
        for e in [
            Event::Minted,
            Event::Running,
            Event::Exited(ExitKind::Outdated),
        ] {
            b.apply("n0", e, t0, 0.0).expect("known");
        }
        let p = plan(&b, &s, t0 + Duration::from_secs(3600));
        assert_eq!(p.starts, 0);
        assert_eq!(p.held_back, Some(HeldBack::Outdated));
    }

    #[test]
    fn failed_starts_back_off() {
        let t0 = Instant::now();
        let s = settings();
        let mut b = Book {
            assigned: 1,
            ..Book::default()
        };
        start(&mut b, 1, t0);
        b.apply("n0", Event::Minted, t0, 0.0).expect("known");
        b.apply("n0", Event::FailedToStart, t0, 0.0).expect("known");
        // Still registered: Deregistering, counting toward max but not capacity.
        let p = plan(&b, &s, t0);
        assert_eq!((p.starts, p.held_back), (0, Some(HeldBack::Backoff)));
        assert_eq!(p.wake_at, Some(t0 + Duration::from_secs(1)));
        assert_eq!(plan(&b, &s, t0 + Duration::from_secs(1)).starts, 1);
    }

    #[test]
    fn failed_removals_are_retried_when_due() {
        let t0 = Instant::now();
        let s = settings();
        let mut b = book(&[Phase::Deregistering], t0);
        b.runners.get_mut("r0").expect("present").retry_at = Some(t0 + Duration::from_secs(4));
        let p = plan(&b, &s, t0);
        assert!(p.events.is_empty());
        assert_eq!(p.wake_at, Some(t0 + Duration::from_secs(4)));
        let p = plan(&b, &s, t0 + Duration::from_secs(4));
        assert_eq!(p.events, vec![("r0".into(), Event::RetryRemoval)]);
        // Never while one is in flight.
        b.runners.get_mut("r0").expect("present").removing = true;
        assert!(plan(&b, &s, t0 + Duration::from_secs(4)).events.is_empty());
    }

    #[test]
    fn shutting_down_removes_idle_runners_at_once_and_starts_none() {
        let t0 = Instant::now();
        let s = settings();
        let mut b = book(&[Phase::Idle, Phase::Busy, Phase::Exited], t0);
        b.assigned = 5;
        b.stopping = true;
        let p = plan(&b, &s, t0);
        assert_eq!(p.starts, 0);
        assert_eq!(
            p.events,
            vec![
                ("r2".into(), Event::Timeout),
                ("r0".into(), Event::ScaleDown)
            ]
        );
    }

    #[test]
    fn huge_durations_never_come_due() {
        let t0 = Instant::now();
        let mut s = settings();
        s.idle_delay = Duration::MAX;
        s.exit_grace = Duration::MAX;
        let b = book(&[Phase::Idle, Phase::Exited], t0);
        let p = plan(&b, &s, t0 + Duration::from_secs(1));
        assert!(p.events.is_empty());
    }
}
