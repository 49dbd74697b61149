//! The pod lifecycle as an explicit state machine, and the per-container restart logic
//! (restart policy, CrashLoopBackOff back-off). Pure: no I/O, time is passed in.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Parses the spec value; Kubernetes' default is `Always`.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// Exponential back-off between restarts of a crashing container: the first restart is
/// immediate, then `initial`, doubling up to `max` (Kubernetes: 10 s .. 5 min). A container
/// that ran for `reset_after` starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            reset_after: max * 2,
            failures: 0,
        }
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next start after an exit, given how long the container ran.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.failures = 0;
        }
        let failures = self.failures;
        self.failures = self.failures.saturating_add(1);
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How one container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    pub container_id: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed` (exit 0), `Error`, `OOMKilled`, `ContainerStatusUnknown`.
    pub reason: String,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
}

impl Termination {
    /// The Kubernetes reason for an exit code.
    pub fn reason_for(exit_code: i32) -> &'static str {
        if exit_code == 0 { "Completed" } else { "Error" }
    }
}

/// The state of one container as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running: `ContainerCreating`, `CrashLoopBackOff`, `RunContainerError`, ...
    Waiting {
        reason: String,
        message: Option<String>,
        /// When the next start may happen (`None`: now).
        retry_at: Option<Instant>,
    },
    Running {
        container_id: String,
        started_at: jiff::Timestamp,
        since: Instant,
    },
    /// Finished for good (the restart policy does not start it again).
    Terminated(Termination),
}

/// What the pod worker should do with a container now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it (first start or restart).
    Start,
    /// Nothing until this instant (back-off).
    WaitUntil(Instant),
    /// It is running; nothing to do.
    Keep,
    /// It finished for good.
    Done,
}

/// One container's record in the pod worker.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub name: String,
    pub state: ContainerState,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    pub ready: bool,
    /// Whether it was ever started (a pod is Pending until every container started once).
    pub ever_started: bool,
    pub backoff: Backoff,
}

impl ContainerRecord {
    pub fn new(name: &str, backoff: Backoff) -> Self {
        Self {
            name: name.to_owned(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
                retry_at: None,
            },
            last_termination: None,
            restart_count: 0,
            ready: false,
            ever_started: false,
            backoff,
        }
    }

    pub fn decide(&self, now: Instant) -> Decision {
        match &self.state {
            ContainerState::Running { .. } => Decision::Keep,
            ContainerState::Terminated(_) => Decision::Done,
            ContainerState::Waiting {
                retry_at: Some(t), ..
            } if *t > now => Decision::WaitUntil(*t),
            ContainerState::Waiting { .. } => Decision::Start,
        }
    }

    /// The container was started.
    pub fn on_started(&mut self, container_id: String, started_at: jiff::Timestamp, now: Instant) {
        if self.ever_started {
            self.restart_count += 1;
        }
        self.ever_started = true;
        self.ready = false;
        self.state = ContainerState::Running {
            container_id,
            started_at,
            since: now,
        };
    }

    /// Starting failed (`reason` like `RunContainerError`, `ErrImagePull`): retry after the
    /// back-off, reporting `backoff_reason` meanwhile.
    pub fn on_start_failed(&mut self, reason: &str, message: String, now: Instant) {
        let delay = self
            .backoff
            .next_delay(Duration::ZERO)
            .max(Duration::from_millis(500));
        self.ready = false;
        self.state = ContainerState::Waiting {
            reason: reason.to_owned(),
            message: Some(message),
            retry_at: Some(now + delay),
        };
    }

    /// The container exited. Returns the back-off delay when it will be restarted.
    pub fn on_exited(
        &mut self,
        term: Termination,
        policy: RestartPolicy,
        now: Instant,
    ) -> Option<Duration> {
        let ran_for = match &self.state {
            ContainerState::Running { since, .. } => now.saturating_duration_since(*since),
            _ => Duration::ZERO,
        };
        self.ready = false;
        self.last_termination = Some(term.clone());
        if policy.restarts(term.exit_code) {
            let delay = self.backoff.next_delay(ran_for);
            self.state = ContainerState::Waiting {
                reason: if delay.is_zero() {
                    "ContainerCreating".into()
                } else {
                    "CrashLoopBackOff".into()
                },
                message: (!delay.is_zero()).then(|| {
                    format!(
                        "back-off {}s restarting failed container={}",
                        delay.as_secs(),
                        self.name
                    )
                }),
                retry_at: Some(now + delay),
            };
            Some(delay)
        } else {
            self.state = ContainerState::Terminated(term);
            None
        }
    }

    pub fn backoff_failures(&self) -> u32 {
        self.backoff.failures()
    }

    pub fn container_id(&self) -> Option<&str> {
        match &self.state {
            ContainerState::Running { container_id, .. } => Some(container_id),
            ContainerState::Terminated(t) => Some(&t.container_id),
            ContainerState::Waiting { .. } => self
                .last_termination
                .as_ref()
                .map(|t| t.container_id.as_str()),
        }
    }
}

/// `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// The pod phase from its containers, as Kubernetes computes it: Pending until every container
/// started once; Succeeded/Failed when all finished for good; Running otherwise.
pub fn pod_phase(containers: &[ContainerRecord]) -> Phase {
    if containers.is_empty() || containers.iter().any(|c| !c.ever_started) {
        return Phase::Pending;
    }
    let finished: Vec<&Termination> = containers
        .iter()
        .filter_map(|c| match &c.state {
            ContainerState::Terminated(t) => Some(t),
            _ => None,
        })
        .collect();
    if finished.len() == containers.len() {
        if finished.iter().all(|t| t.exit_code == 0) {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    } else {
        Phase::Running
    }
}

/// Where a pod is in its life on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLifecycle {
    /// Accepted; sandbox (namespaces, network, cgroup) not created yet.
    Pending,
    /// Sandbox up; containers started and restarted per the restart policy.
    Running,
    /// Every container finished for good (Succeeded or Failed); the sandbox is gone.
    Finished(Phase),
    /// Deletion requested: SIGTERM sent, SIGKILL at `deadline`.
    Terminating { deadline: Instant },
    /// Everything stopped and cleaned up; the pod object may be deleted.
    Terminated,
}

/// What happens to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    SandboxReady,
    /// All containers finished for good with this phase (Succeeded or Failed).
    ContainersFinished(Phase),
    /// The pod was deleted (deletionTimestamp set) with this grace period.
    DeletionRequested {
        grace: Duration,
    },
    /// Every process is gone and the sandbox is removed.
    AllStopped,
}

impl PodLifecycle {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Finished(_) => "Finished",
            Self::Terminating { .. } => "Terminating",
            Self::Terminated => "Terminated",
        }
    }

    /// The typed transition function.
    pub fn on(self, event: PodEvent, now: Instant) -> Result<Self> {
        use PodEvent as E;
        use PodLifecycle as S;
        match (self, event) {
            (S::Pending, E::SandboxReady) => Ok(S::Running),
            (S::Running, E::ContainersFinished(p @ (Phase::Succeeded | Phase::Failed))) => {
                Ok(S::Finished(p))
            }
            (S::Pending | S::Finished(_), E::DeletionRequested { .. }) => {
                Ok(S::Terminating { deadline: now })
            }
            (S::Running, E::DeletionRequested { grace }) => Ok(S::Terminating {
                deadline: now + grace,
            }),
            // A second delete may shorten the grace period, never extend it.
            (S::Terminating { deadline }, E::DeletionRequested { grace }) => Ok(S::Terminating {
                deadline: deadline.min(now + grace),
            }),
            (S::Terminating { .. }, E::AllStopped) => Ok(S::Terminated),
            (from, event) => Err(Error::Transition {
                from: from.name(),
                event: format!("{event:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> Termination {
        Termination {
            container_id: "process://x".into(),
            exit_code: code,
            signal: None,
            reason: Termination::reason_for(code).into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn rec() -> ContainerRecord {
        ContainerRecord::new(
            "c",
            Backoff::new(Duration::from_secs(10), Duration::from_secs(300)),
        )
    }

    #[test]
    fn backoff_is_immediate_then_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (0..8)
            .map(|_| b.next_delay(Duration::ZERO).as_secs())
            .collect();
        assert_eq!(got, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(Duration::from_secs(601)), Duration::ZERO);
        assert_eq!(b.next_delay(Duration::ZERO), Duration::from_secs(10));
    }

    #[test]
    fn restart_policy_decides_by_exit_code() {
        assert!(RestartPolicy::Always.restarts(0) && RestartPolicy::Always.restarts(1));
        assert!(!RestartPolicy::OnFailure.restarts(0) && RestartPolicy::OnFailure.restarts(2));
        assert!(!RestartPolicy::Never.restarts(0) && !RestartPolicy::Never.restarts(1));
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
        assert_eq!(RestartPolicy::parse(Some("Never")), RestartPolicy::Never);
    }

    #[tokio::test(start_paused = true)]
    async fn crashing_container_enters_crash_loop_back_off_and_counts_restarts() {
        let now = Instant::now();
        let mut c = rec();
        assert_eq!(c.decide(now), Decision::Start);
        c.on_started("process://1".into(), jiff::Timestamp::UNIX_EPOCH, now);
        assert_eq!(c.decide(now), Decision::Keep);
        assert_eq!(c.restart_count, 0);
        // First exit: restarted right away.
        assert_eq!(
            c.on_exited(term(1), RestartPolicy::Always, now),
            Some(Duration::ZERO)
        );
        assert_eq!(c.decide(now), Decision::Start);
        c.on_started("process://2".into(), jiff::Timestamp::UNIX_EPOCH, now);
        assert_eq!(c.restart_count, 1);
        // Second exit: CrashLoopBackOff for 10 s.
        assert_eq!(
            c.on_exited(term(1), RestartPolicy::Always, now),
            Some(Duration::from_secs(10))
        );
        assert!(
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        assert_eq!(
            c.decide(now),
            Decision::WaitUntil(now + Duration::from_secs(10))
        );
        assert_eq!(c.decide(now + Duration::from_secs(10)), Decision::Start);
        assert_eq!(c.last_termination.as_ref().map(|t| t.exit_code), Some(1));
        assert_eq!(c.container_id(), Some("process://x"));
    }

    #[tokio::test(start_paused = true)]
    async fn on_failure_keeps_a_successful_container_terminated() {
        let now = Instant::now();
        let mut c = rec();
        c.on_started("process://1".into(), jiff::Timestamp::UNIX_EPOCH, now);
        assert_eq!(c.on_exited(term(0), RestartPolicy::OnFailure, now), None);
        assert_eq!(c.decide(now), Decision::Done);
        assert_eq!(pod_phase(std::slice::from_ref(&c)), Phase::Succeeded);
    }

    #[tokio::test(start_paused = true)]
    async fn pod_phase_follows_kubernetes_rules() {
        let now = Instant::now();
        let mut a = rec();
        let mut b = rec();
        assert_eq!(pod_phase(&[a.clone(), b.clone()]), Phase::Pending);
        a.on_started("1".into(), jiff::Timestamp::UNIX_EPOCH, now);
        assert_eq!(pod_phase(&[a.clone(), b.clone()]), Phase::Pending);
        b.on_started("2".into(), jiff::Timestamp::UNIX_EPOCH, now);
        assert_eq!(pod_phase(&[a.clone(), b.clone()]), Phase::Running);
        a.on_exited(term(0), RestartPolicy::Never, now);
        assert_eq!(pod_phase(&[a.clone(), b.clone()]), Phase::Running);
        b.on_exited(term(3), RestartPolicy::Never, now);
        assert_eq!(pod_phase(&[a, b]), Phase::Failed);
        assert_eq!(pod_phase(&[]), Phase::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_transitions_are_typed_and_reject_nonsense() {
        let now = Instant::now();
        let s = PodLifecycle::Pending
            .on(PodEvent::SandboxReady, now)
            .expect("pending -> running");
        assert_eq!(s, PodLifecycle::Running);
        let s = s
            .on(
                PodEvent::DeletionRequested {
                    grace: Duration::from_secs(30),
                },
                now,
            )
            .expect("running -> terminating");
        assert_eq!(
            s,
            PodLifecycle::Terminating {
                deadline: now + Duration::from_secs(30)
            }
        );
        let s = s
            .on(
                PodEvent::DeletionRequested {
                    grace: Duration::from_secs(1),
                },
                now,
            )
            .expect("shorter grace");
        assert_eq!(
            s,
            PodLifecycle::Terminating {
                deadline: now + Duration::from_secs(1)
            }
        );
        let s = s.on(PodEvent::AllStopped, now).expect("stopped");
        assert_eq!(s, PodLifecycle::Terminated);
        let err = PodLifecycle::Terminated
            .on(PodEvent::SandboxReady, now)
            .expect_err("terminated pods do not come back");
        assert!(err.to_string().contains("Terminated"), "{err}");
        assert!(
            PodLifecycle::Pending
                .on(PodEvent::ContainersFinished(Phase::Succeeded), now)
                .is_err()
        );
        assert_eq!(
            PodLifecycle::Running
                .on(PodEvent::ContainersFinished(Phase::Failed), now)
                .expect("finish"),
            PodLifecycle::Finished(Phase::Failed)
        );
    }
}
