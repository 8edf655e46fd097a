//! The runner life cycle: one [`Phase`] per runner, one [`Event`] at a time, and one
//! transition function, [`next`], that says where the runner goes and what to do about it.
//!
//! The table below is the whole function: every (phase, event) pair it handles, and nothing
//! else (a pair not listed leaves the runner where it is and does nothing). A test checks
//! that the table and [`next`] agree for every pair, so the two cannot drift.
//!
#![doc = include_str!("lifecycle.md")]

use std::fmt;

/// Where a runner is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Its JIT config is being minted (no registration known yet).
    Minting,
    /// Minted (registered with GitHub); the provisioner is starting it.
    Starting,
    /// Running, no job yet.
    Idle,
    /// Running a job.
    Busy,
    /// It ended (or vanished) before its `JobCompleted` arrived: it may well have run its
    /// job, whose messages are late. It keeps counting as capacity until `JobCompleted`
    /// names it or the exit grace passes, so it is never replaced for the job it ran.
    Exited,
    /// Its job completed; waiting for it to end.
    Finished,
    /// Its registration is being removed while it still runs (an idle runner above the
    /// target, a broken one); it is stopped once GitHub confirmed.
    Removing,
    /// It no longer runs; its registration is being removed (retried until it is gone).
    Deregistering,
    /// Its registration is gone; the provisioner is stopping it.
    Stopping,
    /// Stopped by force (shutdown after the drain timeout): the runner is stopped first,
    /// its registration removed afterwards.
    Killing,
}

impl Phase {
    /// Every phase, in life-cycle order.
    pub const ALL: [Phase; 10] = [
        Phase::Minting,
        Phase::Starting,
        Phase::Idle,
        Phase::Busy,
        Phase::Exited,
        Phase::Finished,
        Phase::Removing,
        Phase::Deregistering,
        Phase::Stopping,
        Phase::Killing,
    ];

    /// Whether the runner counts toward the target (serves or will serve a job).
    pub fn is_capacity(self) -> bool {
        matches!(
            self,
            Phase::Minting | Phase::Starting | Phase::Idle | Phase::Busy | Phase::Exited
        )
    }

    /// Whether the runner is on its way out: it serves no job but may still hold a
    /// registration or a live runner, so it counts toward `max_runners`.
    pub fn is_lingering(self) -> bool {
        !self.is_capacity()
    }

    /// The phase's name, as in the table.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Minting => "Minting",
            Phase::Starting => "Starting",
            Phase::Idle => "Idle",
            Phase::Busy => "Busy",
            Phase::Exited => "Exited",
            Phase::Finished => "Finished",
            Phase::Removing => "Removing",
            Phase::Deregistering => "Deregistering",
            Phase::Stopping => "Stopping",
            Phase::Killing => "Killing",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a runner ended, as far as the life cycle cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// Exit code 0: the runner finished normally (an ephemeral runner does after its job).
    Success,
    /// Exit code 7: the runner refused to start because its version is too old.
    Outdated,
    /// Any other code, a signal, or an unknown end.
    Failed,
}

/// Something that happened to a runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Its JIT config was minted (the runner is registered).
    Minted,
    /// Minting failed and registered nothing (the service refused it).
    MintFailed,
    /// Minting failed in a way that may have registered the runner all the same (the
    /// answer was lost to a timeout or a dropped connection, or was unreadable).
    MintUncertain,
    /// The provisioner refused to create it.
    CreateFailed,
    /// The provisioner reports it running.
    Running,
    /// `JobStarted` named it.
    JobStarted,
    /// `JobCompleted` named it.
    JobCompleted,
    /// The provisioner reports it ended.
    Exited(ExitKind),
    /// The provisioner could not start it (image missing, bad command, ...).
    FailedToStart,
    /// It is gone and nobody here removed it.
    Vanished,
    /// GitHub no longer has its registration (removed now or already gone).
    RemovalDone,
    /// GitHub refused to remove it: it is running a job.
    RemovalRefused,
    /// The removal call failed; whether it is still registered is unknown.
    RemovalFailed,
    /// The provisioner stopped it.
    StopDone,
    /// The provisioner could not stop it.
    StopFailed,
    /// Its phase's deadline passed (start, registration, exit or finish grace).
    Timeout,
    /// It is idle above the target, past the idle delay.
    ScaleDown,
    /// A failed removal is due again.
    RetryRemoval,
    /// A failed stop is due again.
    RetryStop,
    /// Shutdown gave up waiting: stop it now.
    ForceStop,
}

impl Event {
    /// Every event (each exit kind counted as its own event).
    pub const ALL: [Event; 22] = [
        Event::Minted,
        Event::MintFailed,
        Event::MintUncertain,
        Event::CreateFailed,
        Event::Running,
        Event::JobStarted,
        Event::JobCompleted,
        Event::Exited(ExitKind::Success),
        Event::Exited(ExitKind::Outdated),
        Event::Exited(ExitKind::Failed),
        Event::FailedToStart,
        Event::Vanished,
        Event::RemovalDone,
        Event::RemovalRefused,
        Event::RemovalFailed,
        Event::StopDone,
        Event::StopFailed,
        Event::Timeout,
        Event::ScaleDown,
        Event::RetryRemoval,
        Event::RetryStop,
        Event::ForceStop,
    ];

    /// The event's name, as in the table.
    pub fn name(self) -> &'static str {
        match self {
            Event::Minted => "Minted",
            Event::MintFailed => "MintFailed",
            Event::MintUncertain => "MintUncertain",
            Event::CreateFailed => "CreateFailed",
            Event::Running => "Running",
            Event::JobStarted => "JobStarted",
            Event::JobCompleted => "JobCompleted",
            Event::Exited(ExitKind::Success) => "Exited(0)",
            Event::Exited(ExitKind::Outdated) => "Exited(7)",
            Event::Exited(ExitKind::Failed) => "Exited(other)",
            Event::FailedToStart => "FailedToStart",
            Event::Vanished => "Vanished",
            Event::RemovalDone => "RemovalDone",
            Event::RemovalRefused => "RemovalRefused",
            Event::RemovalFailed => "RemovalFailed",
            Event::StopDone => "StopDone",
            Event::StopFailed => "StopFailed",
            Event::Timeout => "Timeout",
            Event::ScaleDown => "ScaleDown",
            Event::RetryRemoval => "RetryRemoval",
            Event::RetryStop => "RetryStop",
            Event::ForceStop => "ForceStop",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the engine does as a runner moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Hand the runner to the provisioner.
    Create,
    /// Remove its registration from GitHub (skipped while one is in flight).
    Deregister,
    /// Stop it through the provisioner (skipped while a stop is in flight).
    Stop,
    /// Retry the failed removal or stop later, with backoff.
    RetryLater,
    /// A start failed: back off further starts (exponential, capped, jittered).
    CountFailure,
    /// A start worked: starts are no longer backed off.
    ResetFailures,
    /// The runner is too old for GitHub: report it and start no more runners.
    ReportOutdated,
}

impl Action {
    /// The action's name, as in the table.
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Deregister => "deregister",
            Action::Stop => "stop",
            Action::RetryLater => "retry later",
            Action::CountFailure => "count failure",
            Action::ResetFailures => "reset failures",
            Action::ReportOutdated => "report outdated",
        }
    }
}

/// Where a runner goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// To this phase (possibly the one it is in).
    To(Phase),
    /// Its record is dropped: nothing of it is left to account for.
    Gone,
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::To(p) => p.fmt(f),
            Next::Gone => f.write_str("gone"),
        }
    }
}

/// The outcome of one event in one phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Where the runner goes.
    pub next: Next,
    /// What to do, in order.
    pub actions: &'static [Action],
}

const fn to(phase: Phase, actions: &'static [Action]) -> Option<Transition> {
    Some(Transition {
        next: Next::To(phase),
        actions,
    })
}

const fn gone(actions: &'static [Action]) -> Option<Transition> {
    Some(Transition {
        next: Next::Gone,
        actions,
    })
}

/// The transition function: what `event` does to a runner in `phase`; `None` when it does
/// nothing (a late or redundant event).
pub fn next(phase: Phase, event: Event) -> Option<Transition> {
    use Action::*;
    use Event as E;
    use ExitKind::*;
    use Phase as P;
    match (phase, event) {
        (P::Minting, E::Minted) => to(P::Starting, &[Create]),
        (P::Minting, E::MintFailed) => gone(&[CountFailure]),
        // Its registration may exist: it keeps counting toward max_runners (never as
        // capacity) until the lookup by name removes it or finds none.
        (P::Minting, E::MintUncertain) => to(P::Deregistering, &[CountFailure, Deregister]),

        (P::Starting, E::Running) => to(P::Idle, &[ResetFailures]),
        (P::Starting | P::Idle, E::CreateFailed) => {
            to(P::Deregistering, &[CountFailure, Deregister])
        }
        (P::Starting | P::Idle, E::JobStarted) => to(P::Busy, &[]),
        (P::Starting | P::Idle, E::JobCompleted) => to(P::Finished, &[]),
        // Exit 0 before any job message: it most likely ran a job whose messages are late.
        (P::Starting | P::Idle, E::Exited(Success)) => to(P::Exited, &[]),
        (P::Starting | P::Idle, E::Exited(Outdated)) => {
            to(P::Deregistering, &[ReportOutdated, Deregister])
        }
        (P::Starting | P::Idle, E::Exited(Failed) | E::FailedToStart) => {
            to(P::Deregistering, &[CountFailure, Deregister])
        }
        (P::Starting | P::Idle, E::Vanished) => to(P::Deregistering, &[Deregister]),
        // Not running within the start deadline, or idle past the registration timeout while
        // jobs wait: broken.
        (P::Starting | P::Idle, E::Timeout) => to(P::Removing, &[CountFailure, Deregister]),
        (P::Idle, E::ScaleDown) => to(P::Removing, &[Deregister]),
        (P::Starting | P::Idle | P::Busy | P::Finished | P::Removing, E::ForceStop) => {
            to(P::Killing, &[Stop])
        }

        (P::Busy, E::JobCompleted) => to(P::Finished, &[]),
        (P::Busy, E::Exited(_) | E::FailedToStart | E::Vanished) => to(P::Exited, &[]),

        (P::Exited, E::JobCompleted | E::Timeout | E::ForceStop) => {
            to(P::Deregistering, &[Deregister])
        }

        (P::Finished, E::Exited(_) | E::FailedToStart | E::Vanished) => {
            to(P::Deregistering, &[Deregister])
        }
        (P::Finished, E::Timeout) => to(P::Removing, &[Deregister]),
        // A removal that was in flight when its job completed.
        (P::Finished, E::RemovalDone) => to(P::Stopping, &[Stop]),

        (P::Removing, E::RemovalDone) => to(P::Stopping, &[Stop]),
        (P::Removing, E::RemovalRefused | E::JobStarted) => to(P::Busy, &[]),
        (P::Removing, E::RemovalFailed) => to(P::Removing, &[RetryLater]),
        (P::Removing | P::Deregistering, E::RetryRemoval) => to(phase, &[Deregister]),
        (P::Removing, E::JobCompleted) => to(P::Finished, &[]),
        // It ended on its own: the removal still completes (or is retried).
        (P::Removing, E::Exited(_) | E::FailedToStart | E::Vanished) => {
            to(P::Deregistering, &[Deregister])
        }

        (P::Deregistering, E::RemovalDone) => gone(&[]),
        (P::Deregistering, E::RemovalRefused | E::RemovalFailed) => {
            to(P::Deregistering, &[RetryLater])
        }

        (P::Stopping, E::StopDone | E::Exited(_) | E::FailedToStart | E::Vanished) => gone(&[]),
        (P::Stopping | P::Killing, E::StopFailed) => to(phase, &[RetryLater]),
        (P::Stopping | P::Killing, E::RetryStop) => to(phase, &[Stop]),

        (P::Killing, E::StopDone | E::Exited(_) | E::FailedToStart | E::Vanished) => {
            to(P::Deregistering, &[Deregister])
        }

        _ => None,
    }
}

/// The table of [`next`] in the module docs' format (one row per handled pair).
pub fn table() -> String {
    let mut out = String::from("| phase | event | next | actions |\n|---|---|---|---|\n");
    for phase in Phase::ALL {
        for event in Event::ALL {
            if let Some(t) = next(phase, event) {
                let actions: Vec<&str> = t.actions.iter().map(|a| a.name()).collect();
                let actions = if actions.is_empty() {
                    "-".to_string()
                } else {
                    actions.join(", ")
                };
                out.push_str(&format!("| {phase} | {event} | {} | {actions} |\n", t.next));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("lifecycle.md");

    /// Parses the table rows of the document: (phase, event) -> (next, actions).
    fn documented() -> Vec<(String, String, String, String)> {
        DOC.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| phase "))
            .map(|l| {
                let cells: Vec<String> = l
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect();
                assert_eq!(cells.len(), 4, "a table row has 4 cells: {l}");
                (
                    cells[0].clone(),
                    cells[1].clone(),
                    cells[2].clone(),
                    cells[3].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_documented_table_is_the_transition_function_for_every_pair() {
        let doc = documented();
        for phase in Phase::ALL {
            for event in Event::ALL {
                let row = doc
                    .iter()
                    .find(|(p, e, _, _)| p == phase.name() && e == event.name());
                match (next(phase, event), row) {
                    (None, None) => {}
                    (Some(t), Some((_, _, n, a))) => {
                        assert_eq!(&t.next.to_string(), n, "{phase} x {event}: next");
                        let actions: Vec<&str> = t.actions.iter().map(|a| a.name()).collect();
                        let want = if actions.is_empty() {
                            "-".to_string()
                        } else {
                            actions.join(", ")
                        };
                        assert_eq!(&want, a, "{phase} x {event}: actions");
                    }
                    (t, row) => panic!(
                        "{phase} x {event}: the function says {t:?}, lifecycle.md says {row:?}; \
                         the generated table is:\n{}",
                        table()
                    ),
                }
            }
        }
        assert_eq!(
            doc.len(),
            table().lines().count() - 2,
            "lifecycle.md has rows for pairs that do not exist; the generated table is:\n{}",
            table()
        );
    }

    #[test]
    fn capacity_and_lingering_split_every_phase() {
        for p in Phase::ALL {
            assert_ne!(p.is_capacity(), p.is_lingering(), "{p}");
        }
    }

    #[test]
    fn a_runner_that_exits_cleanly_before_its_job_messages_is_not_replaced() {
        // Idle --Exited(0)--> Exited: still capacity, no failure counted.
        let t = next(Phase::Idle, Event::Exited(ExitKind::Success)).expect("handled");
        assert_eq!(t.next, Next::To(Phase::Exited));
        assert!(Phase::Exited.is_capacity());
        assert!(!t.actions.contains(&Action::CountFailure));
        // The late JobStarted changes nothing; JobCompleted deregisters it.
        assert_eq!(next(Phase::Exited, Event::JobStarted), None);
        let t = next(Phase::Exited, Event::JobCompleted).expect("handled");
        assert_eq!(t.next, Next::To(Phase::Deregistering));
        assert_eq!(t.actions, &[Action::Deregister]);
    }

    #[test]
    fn a_removal_whose_runner_exits_still_completes() {
        let t = next(Phase::Removing, Event::Exited(ExitKind::Success)).expect("handled");
        assert_eq!(t.next, Next::To(Phase::Deregistering));
        // Only a confirmed removal drops the record; refusals and failures retry.
        assert_eq!(
            next(Phase::Deregistering, Event::RemovalDone).map(|t| t.next),
            Some(Next::Gone)
        );
        for e in [Event::RemovalRefused, Event::RemovalFailed] {
            let t = next(Phase::Deregistering, e).expect("handled");
            assert_eq!(t.next, Next::To(Phase::Deregistering));
            assert_eq!(t.actions, &[Action::RetryLater]);
        }
    }

    #[test]
    fn no_record_with_a_registration_is_dropped_unconfirmed() {
        // The only ways to Gone: a mint that registered nothing, a confirmed removal, and a
        // stop after the registration was confirmed gone.
        for phase in Phase::ALL {
            for event in Event::ALL {
                if let Some(Transition {
                    next: Next::Gone, ..
                }) = next(phase, event)
                {
                    let ok = matches!(
                        (phase, event),
                        (Phase::Minting, Event::MintFailed)
                            | (Phase::Deregistering, Event::RemovalDone)
                            | (Phase::Stopping, _)
                    );
                    assert!(ok, "{phase} x {event} drops a record");
                }
            }
        }
    }

    #[test]
    fn an_uncertain_mint_keeps_its_slot_until_its_registration_is_gone() {
        let t = next(Phase::Minting, Event::MintUncertain).expect("handled");
        assert_eq!(t.next, Next::To(Phase::Deregistering));
        assert_eq!(t.actions, &[Action::CountFailure, Action::Deregister]);
        assert!(
            Phase::Deregistering.is_lingering(),
            "counts toward max_runners"
        );
        assert!(!Phase::Deregistering.is_capacity(), "never as capacity");
    }

    #[test]
    fn outdated_runners_are_reported_not_counted_as_failures() {
        for phase in [Phase::Starting, Phase::Idle] {
            let t = next(phase, Event::Exited(ExitKind::Outdated)).expect("handled");
            assert!(t.actions.contains(&Action::ReportOutdated));
            assert!(!t.actions.contains(&Action::CountFailure));
        }
    }
}
