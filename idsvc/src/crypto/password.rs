//! Password hashing with argon2id on a bounded pool of OS threads.
//!
//! Argon2 is deliberately slow and memory-hard; run on async worker threads it
//! would stall every other request. The pool has one thread per core and a
//! bounded queue: when the queue is full the call fails at once (the gateway
//! answers 503 + Retry-After) instead of piling up latency and memory.

use super::legacy_hash;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::rngs::OsRng;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use zeroize::Zeroizing;

/// argon2id memory cost in KiB: OWASP's first recommendation (m = 19 MiB,
/// t = 2, p = 1), ~10 ms per hash on one modern core.
pub const DEFAULT_ARGON2_MEMORY_KIB: u32 = 19_456;
/// argon2id iterations (OWASP: 2 with 19 MiB).
pub const DEFAULT_ARGON2_ITERATIONS: u32 = 2;
/// argon2id lanes: 1, because the pool already runs one hash per core.
pub const DEFAULT_ARGON2_PARALLELISM: u32 = 1;
/// Password hashes allowed to wait for a core: a few dozen ~10 ms hashes is
/// well under a second of queueing; beyond that, failing fast (503) beats
/// piling up latency and memory.
pub const DEFAULT_ARGON2_QUEUE: usize = 64;

/// argon2id cost; the defaults are the `DEFAULT_ARGON2_*` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct PasswordParams {
    /// argon2id memory cost in KiB.
    #[arg(
        long = "argon2-memory-kib",
        env = "IDBASE_ARGON2_MEMORY_KIB",
        default_value_t = DEFAULT_ARGON2_MEMORY_KIB
    )]
    pub memory_kib: u32,
    /// argon2id iterations.
    #[arg(
        long = "argon2-iterations",
        env = "IDBASE_ARGON2_ITERATIONS",
        default_value_t = DEFAULT_ARGON2_ITERATIONS
    )]
    pub iterations: u32,
    /// argon2id lanes.
    #[arg(
        long = "argon2-parallelism",
        env = "IDBASE_ARGON2_PARALLELISM",
        default_value_t = DEFAULT_ARGON2_PARALLELISM
    )]
    pub parallelism: u32,
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self {
            memory_kib: DEFAULT_ARGON2_MEMORY_KIB,
            iterations: DEFAULT_ARGON2_ITERATIONS,
            parallelism: DEFAULT_ARGON2_PARALLELISM,
        }
    }
}

impl PasswordParams {
    /// argon2id at a cost that keeps functional tests and non-login
    /// benchmarks fast (256 KiB, one pass): the scheme and code path are
    /// still production's. Never for real passwords.
    pub const CHEAP: Self = Self {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
}

impl PasswordParams {
    fn argon2_params(&self) -> anyhow::Result<Params> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))
    }

    /// Hashes on the calling thread (the pool's workers call this).
    pub fn hash(&self, password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        let params = self.argon2_params()?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let phc = || -> password_hash::Result<String> {
            let hash = argon2_output(
                &argon2,
                &params,
                password.as_bytes(),
                salt.as_salt(),
                self.memory_kib,
            )?;
            Ok(PasswordHash {
                algorithm: argon2::ARGON2ID_IDENT,
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params)?,
                salt: Some(salt.as_salt()),
                hash: Some(hash),
            }
            .to_string())
        };
        phc().map_err(|e| anyhow::anyhow!("argon2: {e}"))
    }

    /// Verifies against a stored PHC string with that hash's own parameters.
    pub fn verify(&self, password: &str, stored: &str) -> Verification {
        let parsed = PasswordHash::new(stored).ok().filter(|p| {
            p.algorithm == argon2::ARGON2ID_IDENT || p.algorithm == argon2::ARGON2I_IDENT
        });
        let Some(parsed) = parsed else {
            return self.verify_legacy(password, stored);
        };
        if !self.argon2_matches(password, &parsed) {
            return Verification::Mismatch;
        }
        let current = Params::try_from(&parsed).ok();
        let wanted = Params::new(self.memory_kib, self.iterations, self.parallelism, None).ok();
        let same_params = match (current, wanted) {
            (Some(c), Some(w)) => {
                c.m_cost() == w.m_cost() && c.t_cost() == w.t_cost() && c.p_cost() == w.p_cost()
            }
            _ => false,
        };
        if parsed.algorithm == argon2::ARGON2ID_IDENT && same_params {
            Verification::Match
        } else {
            Verification::MatchNeedsRehash
        }
    }
}

impl PasswordParams {
    /// Recomputes an argon2 PHC hash with its own parameters; the comparison
    /// is `Output`'s constant-time equality.
    fn argon2_matches(&self, password: &str, parsed: &PasswordHash<'_>) -> bool {
        let recompute = || -> password_hash::Result<bool> {
            let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
                return Ok(false);
            };
            let stored = Params::try_from(parsed)?;
            let params = Params::new(
                stored.m_cost(),
                stored.t_cost(),
                stored.p_cost(),
                Some(expected.len()),
            )?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()?
                .unwrap_or_default();
            let argon2 = Argon2::new(
                Algorithm::try_from(parsed.algorithm)?,
                version,
                params.clone(),
            );
            let output =
                argon2_output(&argon2, &params, password.as_bytes(), salt, self.memory_kib)?;
            Ok(output == expected)
        };
        recompute().unwrap_or(false)
    }

    /// An imported hash (see `legacy_hash`): correct means "re-hash now".
    /// Cheap legacy schemes would answer faster than the dummy argon2 verify
    /// done for unknown accounts, so the same argon2 work is done here too and
    /// timing does not tell imported members from unknown emails.
    fn verify_legacy(&self, password: &str, stored: &str) -> Verification {
        let matched = legacy_hash::verify(password, stored);
        let _ = std::hint::black_box(self.hash(password));
        if matched {
            Verification::MatchNeedsRehash
        } else {
            Verification::Mismatch
        }
    }
}

thread_local! {
    /// One argon2 memory area per hashing-pool thread, reused. Allocating and
    /// freeing 19 MiB per hash page-faults every hash in, and glibc keeps the
    /// freed blocks: idsvc held ~380 MiB after a login burst (README, Performance).
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
    /// Set by the pool's workers only: any other thread that hashes once (the
    /// start-up dummy hash, tools) must not keep 19 MiB for good.
    static REUSES_MEMORY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that hashes again and again (the pool's
/// workers, the bench's raw-rate probe): it keeps one argon2 memory area.
pub fn reuse_argon2_memory_on_this_thread() {
    REUSES_MEMORY.set(true);
}

/// The argon2 output for `password` and `salt`: in this thread's reused
/// memory when the cost fits in `reuse_up_to_kib` (our own parameters), in
/// fresh memory for a costlier imported hash, so one such hash cannot pin
/// its memory in the pool for good.
fn argon2_output(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: Salt<'_>,
    reuse_up_to_kib: u32,
) -> password_hash::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(len, |out| {
        if params.m_cost() > reuse_up_to_kib || !REUSES_MEMORY.get() {
            return Ok(argon2.hash_password_into(password, salt, out)?);
        }
        BLOCKS.with_borrow_mut(|blocks| {
            let needed = params.block_count();
            if blocks.len() < needed {
                blocks.resize(needed, Block::default());
            }
            Ok(
                argon2.hash_password_into_with_memory(
                    password,
                    salt,
                    out,
                    &mut blocks[..needed],
                )?,
            )
        })
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    Match,
    /// Correct, but stored with other parameters or another scheme: hash anew.
    MatchNeedsRehash,
    Mismatch,
}

impl Verification {
    pub fn matched(self) -> bool {
        self != Self::Mismatch
    }
}

/// The pool's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("password hashing pool is full")]
pub struct PoolFull;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct HashingPool {
    jobs: crossbeam_channel::Sender<Job>,
    queued: Arc<AtomicUsize>,
    /// Jobs queued or running: the pool is busy when they fill every worker.
    busy: Arc<AtomicUsize>,
    workers: usize,
    params: PasswordParams,
}

impl HashingPool {
    /// `workers` threads (normally one per core) and room for `queue` waiting jobs.
    pub fn new(params: PasswordParams, workers: usize, queue: usize) -> anyhow::Result<Self> {
        params.argon2_params()?;
        let (jobs, inbox) = crossbeam_channel::bounded::<Job>(queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let workers = workers.max(1);
        for n in 0..workers {
            let inbox = inbox.clone();
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    reuse_argon2_memory_on_this_thread();
                    // Ends when every sender is gone.
                    for job in inbox {
                        let depth = queued.fetch_sub(1, Ordering::Relaxed) - 1;
                        metrics::gauge!("idbase_argon2_queue_depth").set(depth as f64);
                        job();
                    }
                })?;
        }
        Ok(Self {
            jobs,
            queued,
            busy: Arc::new(AtomicUsize::new(0)),
            workers,
            params,
        })
    }

    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Hashes a password on the pool.
    pub async fn hash(
        &self,
        password: Zeroizing<String>,
    ) -> Result<anyhow::Result<String>, PoolFull> {
        let params = self.params;
        self.run(move || params.hash(&password)).await
    }

    /// Verifies a password on the pool.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: String,
    ) -> Result<Verification, PoolFull> {
        let params = self.params;
        self.run(move || params.verify(&password, &stored)).await
    }

    /// Verifies a password only when a worker is free: work that may be
    /// dropped (shadow reads) never waits in the queue before a member's
    /// login.
    pub async fn verify_if_idle(
        &self,
        password: Zeroizing<String>,
        stored: String,
    ) -> Result<Verification, PoolFull> {
        if self.busy.load(Ordering::Relaxed) >= self.workers {
            metrics::counter!("idbase_argon2_rejected_total").increment(1);
            return Err(PoolFull);
        }
        self.verify(password, stored).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolFull> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let busy = Arc::clone(&self.busy);
        let job: Job = Box::new(move || {
            // A caller that has gone while this waited in the queue (request
            // cancelled, deadline passed) gets no work: otherwise a burst of
            // abandoned logins against a costly hash keeps the pool busy
            // long after their callers left.
            if reply.is_closed() {
                busy.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("idbase_argon2_abandoned_total").increment(1);
                return;
            }
            let done = work();
            // Free before the caller hears: its next job finds the worker so.
            busy.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(done);
        });
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        self.busy.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.busy.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("idbase_argon2_rejected_total").increment(1);
            return Err(PoolFull);
        }
        metrics::gauge!("idbase_argon2_queue_depth").set(depth as f64);
        answer.await.map_err(|_| PoolFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_interoperate_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let phc = ours.hash("correct horse").unwrap();
        Argon2::default()
            .verify_password(b"correct horse", &PasswordHash::new(&phc).unwrap())
            .unwrap();
        let theirs = |algorithm, memory_kib| {
            Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(memory_kib, 1, 1, None).unwrap(),
            )
            .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
        };
        // Same cost: computed in the reused memory.
        let same = theirs(Algorithm::Argon2id, 64);
        assert_eq!(ours.verify("correct horse", &same), Verification::Match);
        assert_eq!(ours.verify("wrong horse", &same), Verification::Mismatch);
        // Costlier than ours: fresh memory, and a re-hash is due.
        let costlier = theirs(Algorithm::Argon2i, 256);
        assert_eq!(
            ours.verify("correct horse", &costlier),
            Verification::MatchNeedsRehash
        );
        assert_eq!(
            ours.verify("wrong horse", &costlier),
            Verification::Mismatch
        );
        // On a pool thread the same answers come from the reused memory.
        let on_pool = std::thread::spawn(move || {
            reuse_argon2_memory_on_this_thread();
            let phc = ours.hash("correct horse").unwrap();
            Argon2::default()
                .verify_password(b"correct horse", &PasswordHash::new(&phc).unwrap())
                .unwrap();
            (
                ours.verify("correct horse", &same),
                ours.verify("wrong horse", &same),
                ours.verify("correct horse", &costlier),
            )
        });
        assert_eq!(
            on_pool.join().unwrap(),
            (
                Verification::Match,
                Verification::Mismatch,
                Verification::MatchNeedsRehash
            )
        );
    }

    #[tokio::test]
    async fn work_whose_caller_left_is_not_started() {
        let pool = HashingPool::new(cheap(), 1, 4).unwrap();
        // Hold the only worker until the abandoned job is queued behind it.
        let (release, busy) = hold_the_worker(&pool).await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let abandoned = pool.run(move || flag.store(true, Ordering::SeqCst));
        // Queued, then the caller gives up (as a cancelled request does).
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), abandoned).await;
        assert!(gave_up.is_err(), "the worker was held, so the job waited");
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        // The pool runs jobs in order: once this one answers, the abandoned
        // job has been taken off the queue.
        assert!(pool.run(|| true).await.unwrap());
        assert!(!ran.load(Ordering::SeqCst), "abandoned work was started");
    }

    #[tokio::test]
    async fn work_that_may_be_dropped_runs_only_on_a_free_worker() {
        let pool = HashingPool::new(cheap(), 1, 4).unwrap();
        let stored = cheap().hash("correct horse").unwrap();
        let verify = || pool.verify_if_idle(Zeroizing::new("correct horse".into()), stored.clone());
        assert_eq!(verify().await.unwrap(), Verification::Match);
        // Hold the only worker: nothing is queued, yet the pool is busy.
        let (release, busy) = hold_the_worker(&pool).await;
        assert!(verify().await.is_err(), "dropped, not queued");
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        assert_eq!(verify().await.unwrap(), Verification::Match);
    }

    /// Occupies a worker of `pool` until the sender is used; the task
    /// answers `Ok(true)` once the worker was released.
    async fn hold_the_worker(
        pool: &HashingPool,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<bool, PoolFull>>,
    ) {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, on_worker) = tokio::sync::oneshot::channel::<()>();
        let worker = pool.clone();
        let busy = tokio::spawn(async move {
            worker
                .run(move || {
                    let _ = started.send(());
                    hold.recv().is_ok()
                })
                .await
        });
        on_worker.await.unwrap();
        (release, busy)
    }

    fn cheap() -> PasswordParams {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn hash_verify_and_rehash_detection() {
        let params = cheap();
        let hash = params.hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert_eq!(params.verify("correct horse", &hash), Verification::Match);
        assert_eq!(params.verify("wrong horse", &hash), Verification::Mismatch);
        let stronger = PasswordParams {
            memory_kib: 128,
            ..params
        };
        assert_eq!(
            stronger.verify("correct horse", &hash),
            Verification::MatchNeedsRehash
        );
        assert_eq!(params.verify("x", "not a hash"), Verification::Mismatch);
    }

    #[test]
    fn legacy_hashes_verify_and_ask_for_rehash() {
        let params = cheap();
        let bcrypt = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        assert_eq!(params.verify("U*U", bcrypt), Verification::MatchNeedsRehash);
        assert_eq!(params.verify("U*V", bcrypt), Verification::Mismatch);
        let aspnet = "AAABAgMEBQYHCAkKCwwNDg+ukCEMDf0yyQ29NYubggHIVY0sdEUfdyeM+E1LtH1uJg==";
        assert_eq!(
            params.verify("my password", &format!("$aspnet-identity-v2${aspnet}")),
            Verification::MatchNeedsRehash
        );
    }

    #[tokio::test]
    async fn full_queue_fails_fast() {
        // One worker, one queue slot, slow hashes: the third concurrent call is refused.
        let slow = PasswordParams {
            memory_kib: 32 * 1024,
            iterations: 3,
            parallelism: 1,
        };
        let pool = HashingPool::new(slow, 1, 1).unwrap();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.hash(Zeroizing::new("pw".into())).await })
            })
            .collect();
        let mut refused = 0;
        for call in calls {
            if call.await.unwrap().is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 1, "no call was refused");
    }
}
