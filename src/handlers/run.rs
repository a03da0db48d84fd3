//! The runner: admission (bounded queue), concurrency (bounded), and one
//! [`HandlerOutcome`] per handler of an [`Invocation`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::event::EventKind;
use super::layout::HandlerSpec;
use super::process::run_one;

pub use super::env::{daemon_env, message_env, peer_env, HANDLER_VARS};
pub use super::process::HandlerOutcome;

/// Limits of the runner. Config keys: `handler_timeout_s`,
/// `handler_concurrency`, `handler_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Per handler run, from its start; then its process group gets SIGKILL.
    pub timeout: Duration,
    /// Handler processes running at once, over all invocations (at least 1).
    pub max_concurrent: usize,
    /// Invocations admitted (running or waiting) before `submit` refuses (at least 1).
    pub queue_limit: usize,
    /// Bytes of stdout kept per handler; the rest is read and dropped.
    pub max_stdout: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            timeout: Duration::from_secs(30),
            max_concurrent: 8,
            queue_limit: 256,
            max_stdout: 1024 * 1024,
        }
    }
}

/// One event to hand to its handlers.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub kind: EventKind,
    pub tag: String,
    /// From [`message_env`], [`peer_env`] or [`daemon_env`]. `CNSPR_EVENT` and
    /// `CNSPR_TAG` are set from `kind` and `tag` first, so `env` may omit them.
    pub env: Vec<(String, String)>,
    /// Written to each handler's stdin.
    pub body: Bytes,
    /// Usually `HandlerSet::matching(..)` cloned. Empty: resolves at once to `[]`.
    pub handlers: Vec<HandlerSpec>,
}

/// `submit` refused an invocation: the queue is at its limit.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("handler queue full ({limit} events running or waiting); retry later, or raise `handler_queue`/`handler_concurrency`")]
pub struct QueueFull {
    pub limit: usize,
}

/// Runs handlers with bounded concurrency and a bounded queue. Cheap to clone
/// (all clones share the limits).
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RunnerConfig,
    permits: Arc<Semaphore>,
    admitted: AtomicUsize,
    /// Every handler run as it ends (for the dashboard); nobody listening costs nothing.
    runs: tokio::sync::broadcast::Sender<RunRecord>,
}

/// One handler run that ended: what ran, for which event, and how it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    /// `message`, `peer` or `daemon`.
    pub kind: &'static str,
    /// The event's tag.
    pub tag: String,
    /// The handler's path in the handler directory.
    pub handler: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// Holds one queue place; gives it back when dropped.
struct Ticket(Arc<Inner>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runner {
    /// `max_concurrent` and `queue_limit` below 1 are taken as 1.
    pub fn new(mut cfg: RunnerConfig) -> Self {
        cfg.max_concurrent = cfg.max_concurrent.max(1);
        cfg.queue_limit = cfg.queue_limit.max(1);
        Runner {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(cfg.max_concurrent)),
                admitted: AtomicUsize::new(0),
                runs: tokio::sync::broadcast::channel(256).0,
                cfg,
            }),
        }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.inner.cfg
    }

    /// Admits the invocation or refuses it immediately with [`QueueFull`]
    /// (never unbounded memory). The returned future runs all its handlers
    /// (each handler counts against `max_concurrent`; they start in submission
    /// order as places free up) and resolves to one outcome per handler, in
    /// the order of `inv.handlers`. It must be polled inside a tokio runtime.
    /// Dropping it gives its queue place back and SIGKILLs the process groups
    /// of its handlers that are still running.
    pub fn submit(
        &self,
        inv: Invocation,
    ) -> Result<impl Future<Output = Vec<HandlerOutcome>> + Send + 'static, QueueFull> {
        let limit = self.inner.cfg.queue_limit;
        self.inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| QueueFull { limit })?;
        let ticket = Ticket(self.inner.clone());
        Ok(async move {
            let outcomes = run_all(&ticket.0, inv).await;
            drop(ticket);
            outcomes
        })
    }

    /// Every handler run from now on, as it ends.
    pub fn runs(&self) -> tokio::sync::broadcast::Receiver<RunRecord> {
        self.inner.runs.subscribe()
    }

    /// Invocations admitted and not yet finished (or dropped).
    pub fn queued(&self) -> usize {
        self.inner.admitted.load(Ordering::Acquire)
    }
}

async fn run_all(inner: &Inner, inv: Invocation) -> Vec<HandlerOutcome> {
    let mut env = vec![
        ("CNSPR_EVENT".to_owned(), inv.kind.as_str().to_owned()),
        ("CNSPR_TAG".to_owned(), inv.tag.clone()),
    ];
    env.extend(inv.env);
    let env = Arc::new(env);
    let rels: Vec<String> = inv.handlers.iter().map(|h| h.rel.clone()).collect();
    // JoinSet: handlers of one event run in parallel; dropping the set aborts
    // the tasks, whose drop kills the process groups.
    let mut tasks = JoinSet::new();
    for (i, spec) in inv.handlers.into_iter().enumerate() {
        let permits = inner.permits.clone();
        let env = env.clone();
        let body = inv.body.clone();
        let (limit, max_stdout) = (inner.cfg.timeout, inner.cfg.max_stdout);
        let (runs, kind, tag) = (inner.runs.clone(), inv.kind.as_str(), inv.tag.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = std::time::Instant::now();
            let outcome = run_one(spec, &env, body, limit, max_stdout).await;
            if runs.receiver_count() > 0 {
                let _ = runs.send(RunRecord {
                    kind,
                    tag,
                    handler: outcome.handler.clone(),
                    exit_code: outcome.exit_code,
                    timed_out: outcome.timed_out,
                    error: outcome.error.clone(),
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            (i, outcome)
        });
    }
    let mut outcomes: Vec<Option<HandlerOutcome>> = vec![None; rels.len()];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => tracing::error!("handler task failed: {e}"),
        }
    }
    outcomes
        .into_iter()
        .zip(rels)
        .map(|(outcome, handler)| {
            outcome.unwrap_or_else(|| HandlerOutcome {
                handler,
                exit_code: None,
                timed_out: false,
                stdout: Vec::new(),
                truncated: false,
                error: Some("internal error: the handler task failed".to_owned()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::event::Origin;
    use super::super::testutil::{pid_gone, read_pid, script, wait_for};
    use super::*;
    use std::fs;
    use std::path::Path;

    const WAIT: Duration = Duration::from_secs(20);

    fn inv(handlers: Vec<HandlerSpec>) -> Invocation {
        Invocation {
            kind: EventKind::Message,
            tag: "t".into(),
            env: Vec::new(),
            body: Bytes::new(),
            handlers,
        }
    }

    #[tokio::test]
    async fn environment_reaches_the_handler() {
        let tmp = tempfile::tempdir().unwrap();
        let body = r#"for v in EVENT TAG FROM FROM_ID MESSAGE_ID SELF_NAME SELF_ID; do
  eval "echo $v=\$CNSPR_$v"
done
echo "PEER=${CNSPR_PEER-unset} STATE=${CNSPR_DAEMON_STATE-unset}"
echo "PATH_SET=${PATH:+yes}""#;
        let spec = script(tmp.path(), "a/b.sh", body);
        let from = Origin {
            name: "phone",
            id: "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST",
            name_unique: true,
        };
        let runner = Runner::new(RunnerConfig::default());
        let mut i = inv(vec![spec]);
        i.tag = "a.b".into();
        i.env = message_env("desk", "SELFID", "a.b", &from, "msg-1");
        let out = runner.submit(i).unwrap().await;
        let text = String::from_utf8(out[0].stdout.clone()).unwrap();
        let want = "EVENT=message\nTAG=a.b\nFROM=phone\n\
            FROM_ID=ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRST\n\
            MESSAGE_ID=msg-1\nSELF_NAME=desk\nSELF_ID=SELF-ID\n\
            PEER=unset STATE=unset\nPATH_SET=yes\n";
        assert_eq!(text, want);
        assert_eq!(runner.queued(), 0);
    }

    #[tokio::test]
    async fn outcomes_follow_handler_order() {
        let tmp = tempfile::tempdir().unwrap();
        let specs = vec![
            script(tmp.path(), "slow", "sleep 0.3; echo slow"),
            script(tmp.path(), "fast", "echo fast; exit 1"),
        ];
        let runner = Runner::new(RunnerConfig::default());
        let out = runner.submit(inv(specs)).unwrap().await;
        let got: Vec<_> = out
            .iter()
            .map(|o| (o.handler.as_str(), o.exit_code))
            .collect();
        assert_eq!(got, [("slow", Some(0)), ("fast", Some(1))]);
        assert!(runner.submit(inv(vec![])).unwrap().await.is_empty());
    }

    fn log_lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_never_exceeds_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let release = tmp.path().join("release");
        let body = format!(
            "echo start >> {log}\n\
             while [ ! -e {release} ]; do sleep 0.01; done\n\
             echo end >> {log}",
            log = log.display(),
            release = release.display()
        );
        let specs: Vec<_> = (0..6)
            .map(|i| script(tmp.path(), &format!("h{i}"), &body))
            .collect();
        let runner = Runner::new(RunnerConfig {
            max_concurrent: 2,
            ..RunnerConfig::default()
        });
        let first = tokio::spawn(runner.submit(inv(specs[..3].to_vec())).unwrap());
        let second = tokio::spawn(runner.submit(inv(specs[3..].to_vec())).unwrap());
        assert_eq!(runner.queued(), 2);
        let starts = || log_lines(&log).iter().filter(|l| *l == "start").count();
        wait_for("two handlers to start", WAIT, || starts() >= 2).await;
        fs::write(&release, "").unwrap();
        let mut outcomes = first.await.unwrap();
        outcomes.extend(second.await.unwrap());
        assert!(outcomes.iter().all(HandlerOutcome::success), "{outcomes:?}");
        let (mut running, mut peak) = (0, 0);
        for line in log_lines(&log) {
            if line == "start" {
                running += 1;
                peak = peak.max(running);
            } else {
                running -= 1;
            }
        }
        assert_eq!(peak, 2, "{:?}", log_lines(&log));
        assert_eq!(runner.queued(), 0);
    }

    #[tokio::test]
    async fn queue_full_is_immediate() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(tmp.path(), "x", "true");
        let runner = Runner::new(RunnerConfig {
            queue_limit: 2,
            ..RunnerConfig::default()
        });
        let a = runner.submit(inv(vec![spec.clone()])).unwrap();
        let b = runner.submit(inv(vec![spec.clone()])).unwrap();
        let refused = runner.submit(inv(vec![spec.clone()])).err().unwrap();
        assert_eq!(refused, QueueFull { limit: 2 });
        assert!(refused.to_string().contains("handler_queue"));
        assert_eq!(runner.queued(), 2);
        drop(a);
        assert_eq!(runner.queued(), 1);
        let c = runner.submit(inv(vec![spec])).unwrap();
        assert_eq!(b.await[0].exit_code, Some(0));
        assert_eq!(c.await[0].exit_code, Some(0));
        assert_eq!(runner.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_future_kills_the_handlers() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(
            tmp.path(),
            "hang",
            "sleep 1000 &\necho $! > child.pid\necho $$ > leader.pid\nsleep 1000",
        );
        let runner = Runner::new(RunnerConfig::default());
        let task = tokio::spawn(runner.submit(inv(vec![spec])).unwrap());
        let child = read_pid(&tmp.path().join("child.pid")).await;
        let leader = read_pid(&tmp.path().join("leader.pid")).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        wait_for("the leader to die", WAIT, || pid_gone(leader)).await;
        wait_for("the background child to die", WAIT, || pid_gone(child)).await;
        assert_eq!(runner.queued(), 0);
    }

    #[test]
    fn config_defaults_and_clamps() {
        let cfg = RunnerConfig::default();
        assert_eq!(cfg.timeout, Duration::from_secs(30));
        assert_eq!((cfg.max_concurrent, cfg.queue_limit), (8, 256));
        assert_eq!(cfg.max_stdout, 1 << 20);
        let runner = Runner::new(RunnerConfig {
            max_concurrent: 0,
            queue_limit: 0,
            ..cfg
        });
        assert_eq!(runner.config().max_concurrent, 1);
        assert_eq!(runner.config().queue_limit, 1);
    }
}
