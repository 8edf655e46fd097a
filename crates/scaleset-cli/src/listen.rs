//! `scaleset listen`: a scale set's demand as newline-delimited JSON events.
//!
//! Built on the library's [`Listener`]: the [`MetricsRecorder`] hook prints the statistics
//! (the listener records them first: from the session before the first poll, then from every
//! message), the [`Scaler`] prints the job events and the desired runner count. The stream is
//! therefore, per message: `statistics`, job events (`jobStarted` then `jobCompleted`), then
//! `desiredRunners`; an empty poll prints `desiredRunners` alone.

use std::sync::{Arc, Mutex};

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, ConflictPolicy, Error, JobCompleted, JobStarted, Listener, ListenerConfig,
    MetricsRecorder, RunnerScaleSetStatistic, ScaleSetId, Scaler, SystemInfo,
};
use clap::Args;
use serde::Serialize;

use crate::error::{CliError, OrCli};
use crate::globals::{ConnectionArgs, client_from_connection, system_info};
use crate::output::print_line;
use crate::signal::shutdown_token;

/// `listen` arguments.
#[derive(Args)]
#[command(after_help = "\
Prints one JSON object per line until SIGINT/SIGTERM, then deletes the
session and exits 0:
  {\"event\":\"statistics\",\"statistics\":{\"totalAssignedJobs\":1,...}}
  {\"event\":\"jobStarted\",\"job\":{\"runnerRequestId\":1,\"jobId\":\"...\",...}}
  {\"event\":\"jobCompleted\",\"job\":{...,\"result\":\"succeeded\"}}
  {\"event\":\"desiredRunners\",\"count\":1}
Statistics come first from the session, then from every message;
desiredRunners (the scale set's totalAssignedJobs) follows them and every
empty poll. Exit 4 when another client holds the session, unless
--wait-for-session. The scale set receives jobs up to --max-runners.

Examples:
  scaleset listen --scale-set-id 7
  scaleset listen --scale-set-id 7 --max-runners 20 --wait-for-session

  # only the desired runner counts
  scaleset listen --scale-set-id 7 |
    jq -c 'select(.event == \"desiredRunners\")'")]
pub(crate) struct ListenArgs {
    /// The scale set to listen to.
    #[arg(long, value_name = "ID", value_parser = crate::cli::id_parser::<ScaleSetId>())]
    scale_set_id: ScaleSetId,
    /// How many runners this listener could run: sent to the service as the capacity.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX))
    )]
    max_runners: u32,
    /// Session owner name [default: this host's name].
    #[arg(long, value_name = "NAME", value_parser = crate::cli::not_blank)]
    owner: Option<String>,
    /// Wait for another client's session to end instead of exiting 4.
    #[arg(long)]
    wait_for_session: bool,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

const OP: &str = "listen";

/// Runs `listen`.
pub(crate) async fn run(g: &ConnectionArgs, args: ListenArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    client.set_system_info(SystemInfo {
        scale_set_id: args.scale_set_id,
        subsystem: "listen".to_string(),
        ..system_info()
    });
    let shutdown = shutdown_token()?;
    let policy = if args.wait_for_session {
        ConflictPolicy::Wait(None)
    } else {
        ConflictPolicy::Fail
    };
    let owner = args
        .owner
        .as_deref()
        .map(str::trim)
        .filter(|o| !o.is_empty());
    let session = match client
        .create_message_session_client_waiting(args.scale_set_id, owner, policy, &shutdown)
        .await
    {
        Ok(session) => session,
        Err(Error::Cancelled) => return Ok(()),
        Err(e) => return Err(CliError::api(OP, e)),
    };
    tracing::info!(
        scale_set_id = args.scale_set_id.get(),
        session_id = %session.session_id(),
        "message session created"
    );
    let mut config = ListenerConfig::new(args.scale_set_id, args.max_runners);
    config.conflict = policy;
    let printer = Arc::new(EventPrinter::new(shutdown.clone()));
    let listener = match Listener::new(session.clone(), config) {
        Ok(listener) => listener.with_metrics(printer.clone()),
        Err(e) => {
            if let Err(close) = session.close().await {
                tracing::warn!(error = %close, "could not delete the message session");
            }
            return Err(CliError::api(OP, e));
        }
    };
    let result = listener.run(printer.as_ref(), &shutdown).await;
    if let Some(e) = printer.write_error() {
        return Err(CliError::other(
            "Output",
            format!("{OP}: cannot write to stdout: {e}"),
        ));
    }
    result.or_cli(OP)
}

/// One line of the event stream.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
enum Event<'a> {
    Statistics {
        statistics: &'a RunnerScaleSetStatistic,
    },
    JobStarted {
        job: &'a JobStarted,
    },
    JobCompleted {
        job: &'a JobCompleted,
    },
    DesiredRunners {
        count: i64,
    },
}

/// Prints events; on a write failure (stdout closed) it remembers the error and stops the
/// listener, which then deletes its session.
struct EventPrinter {
    shutdown: CancellationToken,
    write_error: Mutex<Option<String>>,
}

impl EventPrinter {
    fn new(shutdown: CancellationToken) -> EventPrinter {
        EventPrinter {
            shutdown,
            write_error: Mutex::new(None),
        }
    }

    fn emit(&self, event: &Event<'_>) -> Result<(), BoxError> {
        if self.shutdown.is_cancelled() && self.write_error().is_some() {
            return Err("stdout is closed".into());
        }
        print_line(event).map_err(|e| {
            let mut slot = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
            self.shutdown.cancel();
            Box::new(e) as BoxError
        })
    }

    fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl MetricsRecorder for EventPrinter {
    fn record_statistics(&self, statistics: &RunnerScaleSetStatistic) {
        // A failure is remembered and stops the listener; nothing else to do here.
        let _ = self.emit(&Event::Statistics { statistics });
    }
}

impl Scaler for EventPrinter {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        self.emit(&Event::DesiredRunners { count })?;
        Ok(count)
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        self.emit(&Event::JobStarted { job })
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        self.emit(&Event::JobCompleted { job })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_documented_shape() {
        let stats = RunnerScaleSetStatistic {
            total_assigned_jobs: 2,
            ..Default::default()
        };
        let v = serde_json::to_value(Event::Statistics { statistics: &stats }).expect("json");
        assert_eq!(v["event"], "statistics");
        assert_eq!(v["statistics"]["totalAssignedJobs"], 2);
        let v = serde_json::to_value(Event::DesiredRunners { count: 3 }).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"event": "desiredRunners", "count": 3})
        );
        let job = JobStarted {
            runner_name: "r".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(Event::JobStarted { job: &job }).expect("json");
        assert_eq!(v["event"], "jobStarted");
        assert_eq!(v["job"]["runnerName"], "r");
        assert!(v["job"].get("runnerRequestId").is_some());
        let job = JobCompleted::default();
        let v = serde_json::to_value(Event::JobCompleted { job: &job }).expect("json");
        assert_eq!(v["event"], "jobCompleted");
        assert!(v["job"].get("result").is_some());
    }
}
