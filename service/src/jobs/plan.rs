//! What a job does next, decided from its state, the fleet and the clock: the events to
//! record and the devices to send the command to. Pure (no I/O, no clock), so the rules
//! are tested deterministically; the owner records the events durably before it sends.

use fleetwatch_protocol::{
    patch_reported, AbortDecision, CanaryFigures, CommandState, DeviceId, ExecutionChange,
    ExecutionState, JobCommand, JobEventBody, JobSpec,
};

use super::fleet::{DeviceView, FleetView};
use super::state::JobState;

/// The outcome of one step.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// To record (in order) before anything is sent.
    pub events: Vec<JobEventBody>,
    /// Devices to send the job's command to, once the events are recorded.
    pub send: Vec<DeviceId>,
}

/// What the step may do besides recording.
#[derive(Clone, Copy, Debug)]
pub struct StepRules {
    pub now_ms: i64,
    /// The owner's tick: the rate limit spreads a minute's sends over ticks.
    pub tick_ms: u64,
    /// Send `sent` executions again whose command the twin does not show after this.
    pub resend_after_ms: u64,
    /// Send every `sent` execution again (the first step after a restore).
    pub resend_all: bool,
}

fn change(device_id: &DeviceId, state: ExecutionState, detail: Option<String>) -> ExecutionChange {
    ExecutionChange {
        device_id: device_id.clone(),
        state,
        detail,
    }
}

/// Decide the job's next events and sends.
pub fn step(job: &JobState, fleet: &FleetView, rules: StepRules) -> Step {
    let mut out = Step::default();
    if job.finished_ms.is_some() {
        return out;
    }
    let mut projected = job.clone();
    let outcomes = observe(job, fleet, rules.now_ms);
    if !outcomes.is_empty() {
        record(
            &mut projected,
            &mut out,
            JobEventBody::Executions { changes: outcomes },
            rules.now_ms,
        );
    }
    if !projected.is_stopped() {
        if let Some(decision) = failure_ratio(&projected) {
            record(
                &mut projected,
                &mut out,
                JobEventBody::Aborted(decision),
                rules.now_ms,
            );
        }
    }
    if !projected.is_stopped() {
        advance_waves(&mut projected, &mut out, fleet, rules.now_ms);
    }
    if projected.is_stopped() {
        let queued: Vec<ExecutionChange> = projected
            .executions
            .iter()
            .filter(|(_, e)| e.state == ExecutionState::Queued)
            .map(|(device, _)| {
                change(
                    device,
                    ExecutionState::Cancelled,
                    Some("job stopped before it was sent".into()),
                )
            })
            .collect();
        if !queued.is_empty() {
            record(
                &mut projected,
                &mut out,
                JobEventBody::Executions { changes: queued },
                rules.now_ms,
            );
        }
    } else {
        release(&mut projected, &mut out, fleet, rules);
    }
    resend(&projected, fleet, rules, &mut out);
    let open = projected
        .executions
        .values()
        .any(|e| !e.state.is_terminal());
    let all_waves = projected.waves.len() >= projected.spec.rollout.waves_percent.len()
        && projected
            .waves
            .last()
            .is_some_and(|w| w.finished_ms.is_some());
    // A continuous job waits for devices that match later until it is stopped.
    let done = all_waves && !projected.spec.continuous;
    if !open && (projected.is_stopped() || done) {
        record(
            &mut projected,
            &mut out,
            JobEventBody::Finished,
            rules.now_ms,
        );
    }
    out
}

fn record(job: &mut JobState, out: &mut Step, body: JobEventBody, now_ms: i64) {
    job.apply(&fleetwatch_protocol::JobEvent {
        job_id: job.spec.job_id.clone(),
        at_ms: now_ms,
        body: body.clone(),
    });
    out.events.push(body);
}

/// New states of executions under way, from what their twins show.
fn observe(job: &JobState, fleet: &FleetView, now_ms: i64) -> Vec<ExecutionChange> {
    let spec = &job.spec;
    let mut changes = Vec::new();
    for (device, execution) in &job.executions {
        if !matches!(
            execution.state,
            ExecutionState::Sent | ExecutionState::InProgress
        ) {
            continue;
        }
        let command_id = spec.command_id(device);
        let seen = fleet.with(device, |view| {
            view.map(|v| outcome(&spec.command, &command_id, v))
        });
        let next = match seen.flatten() {
            Some((state, detail)) if state != execution.state => Some((state, detail)),
            _ => timeout(execution, spec, now_ms),
        };
        if let Some((state, detail)) = next {
            changes.push(change(device, state, detail));
        }
    }
    changes
}

/// What the twin says about an execution.
fn outcome(
    command: &JobCommand,
    command_id: &str,
    view: &DeviceView,
) -> Option<(ExecutionState, Option<String>)> {
    match command {
        JobCommand::SoftwareUpdate { version, .. }
            if view.reported.get("firmware").and_then(|v| v.as_str()) == Some(version.as_str()) =>
        {
            return Some((
                ExecutionState::Succeeded,
                Some(format!("reports firmware {version}")),
            ));
        }
        JobCommand::Configuration { desired } => {
            if patch_reported(desired, &view.reported) {
                return Some((
                    ExecutionState::Succeeded,
                    Some("reports the desired configuration".into()),
                ));
            }
            // The twin holds the patch and the device is connected: it has it to apply
            // (its time to report starts); offline, it stays `sent` until it is back.
            let received = view.online && patch_reported(desired, &view.desired);
            return received.then_some((ExecutionState::InProgress, None));
        }
        _ => {}
    }
    let state = view.job_commands.get(command_id)?;
    Some(match (state, command) {
        (CommandState::Queued, _) => return None,
        (CommandState::Sent | CommandState::Acked, _) => (ExecutionState::InProgress, None),
        // An update succeeds on the reported version, not on the device's word alone.
        (CommandState::Succeeded, JobCommand::SoftwareUpdate { .. }) => {
            (ExecutionState::InProgress, None)
        }
        (CommandState::Succeeded, _) => (ExecutionState::Succeeded, None),
        (CommandState::Failed, _) => (
            ExecutionState::Failed,
            Some("the device reported a failure".into()),
        ),
        (CommandState::Expired, _) => (
            ExecutionState::TimedOut,
            Some("the command expired on the twin".into()),
        ),
    })
}

/// Whether the twin shows the job's request for `device` (a command in its journal, or
/// the patch in its desired state).
fn shown(spec: &JobSpec, device: &DeviceId, view: &DeviceView) -> bool {
    match &spec.command {
        JobCommand::Configuration { desired } => patch_reported(desired, &view.desired),
        _ => view.job_commands.contains_key(&spec.command_id(device)),
    }
}

fn timeout(
    execution: &super::state::Execution,
    spec: &JobSpec,
    now_ms: i64,
) -> Option<(ExecutionState, Option<String>)> {
    let overdue =
        |since: Option<i64>, limit: u64| since.is_some_and(|at| now_ms - at > limit as i64);
    match execution.state {
        ExecutionState::InProgress if overdue(execution.started_ms, spec.device_timeout_ms) => {
            Some((
                ExecutionState::TimedOut,
                Some(format!("no outcome within {} ms", spec.device_timeout_ms)),
            ))
        }
        ExecutionState::Sent if overdue(execution.sent_ms, spec.ttl_ms) => Some((
            ExecutionState::TimedOut,
            Some(format!(
                "offline past the time to live of {} ms",
                spec.ttl_ms
            )),
        )),
        _ => None,
    }
}

/// The failure-ratio criterion, when it calls for an abort.
fn failure_ratio(job: &JobState) -> Option<AbortDecision> {
    let count = |state| job.executions.values().filter(|e| e.state == state).count() as u32;
    let (succeeded, failed, timed_out) = (
        count(ExecutionState::Succeeded),
        count(ExecutionState::Failed),
        count(ExecutionState::TimedOut),
    );
    let finished = succeeded + failed + timed_out;
    let criteria = &job.spec.abort;
    if finished == 0 || finished < criteria.min_finished {
        return None;
    }
    let ratio = f64::from(failed + timed_out) / f64::from(finished);
    (ratio > criteria.failure_ratio).then_some(AbortDecision::FailureRatio {
        failed,
        timed_out,
        finished,
        ratio,
        limit: criteria.failure_ratio,
    })
}

/// Whether every execution of `wave` is finished or waits for an offline device.
fn wave_done(job: &JobState, wave: u32, fleet: &FleetView) -> bool {
    job.executions
        .iter()
        .filter(|(_, e)| e.wave == wave)
        .all(|(device, e)| match e.state {
            ExecutionState::Queued | ExecutionState::InProgress => false,
            ExecutionState::Sent => fleet.with(device, |view| !view.is_some_and(|v| v.online)),
            _ => true,
        })
}

/// Start the first wave; mark the current one finished; after its soak, evaluate the
/// canary criterion and start the next one or abort.
fn advance_waves(job: &mut JobState, out: &mut Step, fleet: &FleetView, now_ms: i64) {
    let Some(current) = job.waves.last().cloned() else {
        start_wave(job, out, 0, None, now_ms);
        return;
    };
    let Some(finished_ms) = current.finished_ms else {
        if wave_done(job, current.wave, fleet) {
            record(
                job,
                out,
                JobEventBody::WaveFinished { wave: current.wave },
                now_ms,
            );
        }
        return;
    };
    let next = current.wave as usize + 1;
    if next >= job.spec.rollout.waves_percent.len()
        || now_ms < finished_ms + job.spec.rollout.soak_ms as i64
    {
        return;
    }
    let figures = job
        .spec
        .abort
        .canary
        .as_ref()
        .map(|canary| super::canary::evaluate(job, fleet, canary, now_ms));
    match figures {
        Some(figures) if figures.abort => {
            let decision = AbortDecision::Canary {
                wave: current.wave,
                figures,
            };
            record(job, out, JobEventBody::Aborted(decision), now_ms);
        }
        figures => start_wave(job, out, next, figures, now_ms),
    }
}

fn start_wave(
    job: &mut JobState,
    out: &mut Step,
    wave: usize,
    canary: Option<CanaryFigures>,
    now_ms: i64,
) {
    // The event creates the wave's executions (`queued`) as it is applied.
    let body = JobEventBody::WaveStarted {
        wave: wave as u32,
        reach: job.spec.reach(wave) as u32,
        canary,
    };
    record(job, out, body, now_ms);
}

/// First-send queued executions, within the rate limit.
fn release(job: &mut JobState, out: &mut Step, fleet: &FleetView, rules: StepRules) {
    let per_minute = job.spec.rollout.max_per_minute.max(1) as usize;
    let last_minute = job
        .executions
        .values()
        .filter(|e| e.sent_ms.is_some_and(|at| at > rules.now_ms - 60_000))
        .count();
    let per_tick = (per_minute as u64 * rules.tick_ms).div_ceil(60_000).max(1) as usize;
    let allowed = per_minute.saturating_sub(last_minute).min(per_tick);
    let order = &job.spec.devices;
    let queued = order.iter().filter(|d| {
        job.executions
            .get(*d)
            .is_some_and(|e| e.state == ExecutionState::Queued)
    });
    // A device that changed tenant since the job was created is out of its reach.
    let (mut released, mut left) = (Vec::new(), Vec::new());
    // Only the devices about to be sent are checked: a tick's work follows the rate
    // limit, not the number of executions still queued.
    for device in queued {
        if released.len() >= allowed {
            break;
        }
        let reached = fleet.with(device, |view| {
            view.is_none_or(|v| job.spec.reaches(v.tenant.as_ref()))
        });
        if reached {
            released.push(change(device, ExecutionState::Sent, None));
        } else {
            left.push(change(
                device,
                ExecutionState::Cancelled,
                Some("the device left the job's tenant".into()),
            ));
        }
    }
    if !left.is_empty() {
        let changes = JobEventBody::Executions { changes: left };
        record(job, out, changes, rules.now_ms);
    }
    if released.is_empty() {
        return;
    }
    out.send
        .extend(released.iter().map(|c| c.device_id.clone()));
    record(
        job,
        out,
        JobEventBody::Executions { changes: released },
        rules.now_ms,
    );
}

/// Send again what the twin does not show yet (lost between the record and the send, or
/// all of them after a restore): the same command id, so it is never run twice.
fn resend(job: &JobState, fleet: &FleetView, rules: StepRules, out: &mut Step) {
    for (device, execution) in &job.executions {
        if execution.state != ExecutionState::Sent || out.send.contains(device) {
            continue;
        }
        let stale = rules.now_ms - execution.changed_ms >= rules.resend_after_ms as i64;
        let shown = fleet.with(device, |view| {
            view.is_some_and(|v| shown(&job.spec, device, v))
        });
        if rules.resend_all || (stale && !shown) {
            out.send.push(device.clone());
        }
    }
}
