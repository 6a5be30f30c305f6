//! idsvc's settings: the plain structs the library runs on
//! ([`IdsvcConfig`], [`ServiceConfig`]) and the clap flags that fill them
//! ([`IdsvcArgs`], [`PolicyArgs`]). Every default is a named `DEFAULT_*`
//! constant, used by both the flag and the `Default` impl.

use crate::crypto::PasswordParams;
use crate::crypto::legacy_hash::LegacyHashLimits;
use crate::crypto::password::DEFAULT_ARGON2_QUEUE;
use crate::domain::phase::{
    DEFAULT_GATEWAY_REPORT_TTL_MS, DEFAULT_LEGACY_QUIET_MS, DEFAULT_NATIVE_ID_MARGIN,
    DEFAULT_NATIVE_ID_START, DEFAULT_PARITY_WINDOW_MS, DEFAULT_PHASE_KEEPALIVE_MS,
    DEFAULT_PHASE_POLL_MS, DEFAULT_SHADOW_MIN_PER_KIND, DEFAULT_SHADOW_MIN_SAMPLES,
    DEFAULT_SHADOW_WINDOW_MS, DEFAULT_VALIDATION_MAX_AGE_MS, LegacyProbe, PhaseSettings,
};
use crate::domain::{
    DEFAULT_ACCESS_TTL_SECS, DEFAULT_CREDENTIAL_FAILURE_FLOOR_MS, DEFAULT_EMAIL_FAILURE_FACTOR,
    DEFAULT_LOGIN_FAILURE_LIMIT, DEFAULT_MIN_PASSWORD_CHARS, DEFAULT_REFRESH_GRACE_SECS,
    DEFAULT_REFRESH_TTL_DAYS, DEFAULT_SESSION_IDLE_DAYS, DEFAULT_SESSION_MAX_DAYS, Policy,
    ThrottlePolicy, days,
};
use crate::grpc::credentials::AdminCredentials;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Identity gRPC address: loopback, because the gateway is the only public
/// edge; a deployment binds `0.0.0.0` explicitly.
pub const DEFAULT_GRPC: &str = "127.0.0.1:50051";
/// Admin gRPC address: the next port, loopback for the same reason.
pub const DEFAULT_ADMIN_GRPC: &str = "127.0.0.1:50052";
/// The legacy traffic counts the parity and quiet windows read are kept
/// this long.
const MAX_LEGACY_WINDOW_MS: u64 = crate::domain::phase::LEGACY_TRAFFIC_RETENTION_MS.unsigned_abs();

/// What the ID service runs with, apart from where it listens: its rules
/// and its password hashing.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub policy: Policy,
    pub argon2: PasswordParams,
    /// Password hashes allowed to wait for a core; beyond this, 503 at once.
    pub argon2_queue: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            argon2: PasswordParams::default(),
            argon2_queue: DEFAULT_ARGON2_QUEUE,
        }
    }
}

/// `idbase idsvc` as a library call: [`crate::run`].
#[derive(Clone)]
pub struct IdsvcConfig {
    /// `mysql://user:pass@host/db` or `sqlite://PATH`; may hold a password.
    pub database_url: String,
    pub keys_dir: PathBuf,
    pub grpc: SocketAddr,
    pub admin_grpc: SocketAddr,
    /// Prometheus metrics address; off when `None`.
    pub metrics: Option<SocketAddr>,
    /// mTLS files and caller identity, or loopback plain text.
    pub transport: crate::grpc::TransportArgs,
    pub service: ServiceConfig,
    /// The Phases service's flags; files are read by [`AdminConfig::from_args`].
    pub phases: PhaseArgs,
}

// The database URL may carry a password: never printed.
impl std::fmt::Debug for IdsvcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdsvcConfig")
            .field("keys_dir", &self.keys_dir)
            .field("grpc", &self.grpc)
            .field("admin_grpc", &self.admin_grpc)
            .field("metrics", &self.metrics)
            .field("transport", &self.transport)
            .field("service", &self.service)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

/// The rules members live by; shared by `idbase idsvc`, `idbase dev` and
/// `idbase migrate`.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Shortest password accepted (NIST SP 800-63B: at least 8).
    #[arg(long, env = "IDBASE_MIN_PASSWORD_CHARS", default_value_t = DEFAULT_MIN_PASSWORD_CHARS)]
    pub min_password_chars: usize,
    /// Access token lifetime in seconds (short: they cannot be revoked early).
    #[arg(long, env = "IDBASE_ACCESS_TTL_SECS", default_value_t = DEFAULT_ACCESS_TTL_SECS)]
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in days; each use rotates it.
    #[arg(long, env = "IDBASE_REFRESH_TTL_DAYS", default_value_t = DEFAULT_REFRESH_TTL_DAYS)]
    pub refresh_ttl_days: u64,
    /// Seconds a rotated refresh token may come back (a client that missed our answer).
    #[arg(long, env = "IDBASE_REFRESH_GRACE_SECS", default_value_t = DEFAULT_REFRESH_GRACE_SECS)]
    pub refresh_grace_secs: u64,
    /// Absolute session lifetime in days from login; refreshing never extends it.
    #[arg(long, env = "IDBASE_SESSION_MAX_DAYS", default_value_t = DEFAULT_SESSION_MAX_DAYS)]
    pub session_max_days: u64,
    /// Days without a refresh after which a session cannot rotate any more.
    #[arg(long, env = "IDBASE_SESSION_IDLE_DAYS", default_value_t = DEFAULT_SESSION_IDLE_DAYS)]
    pub session_idle_days: u64,
    /// Failed logins per email and source network (/24, /64) before that pair is locked with
    /// exponential backoff (max 15 min).
    #[arg(long, env = "IDBASE_LOGIN_FAILURE_LIMIT", default_value_t = DEFAULT_LOGIN_FAILURE_LIMIT)]
    pub login_failure_limit: i64,
    /// An email locks on its own after this many times the limit of failures
    /// from any networks (the limit applies per email and source network).
    #[arg(long, env = "IDBASE_LOGIN_FAILURE_EMAIL_FACTOR", default_value_t = DEFAULT_EMAIL_FAILURE_FACTOR)]
    pub login_failure_email_factor: i64,
    /// Least milliseconds a failed login or current-password check takes (padded
    /// with a sleep), so timing does not tell which accounts exist or how their
    /// password is hashed.
    #[arg(
        long,
        env = "IDBASE_CREDENTIAL_FAILURE_FLOOR_MS",
        default_value_t = DEFAULT_CREDENTIAL_FAILURE_FLOOR_MS
    )]
    pub credential_failure_floor_ms: u64,
    #[command(flatten)]
    pub legacy_hash_limits: LegacyHashLimits,
    #[command(flatten)]
    pub argon2: PasswordParams,
    /// Password hashes allowed to wait for a core; beyond this, 503 at once.
    #[arg(long, env = "IDBASE_ARGON2_QUEUE", default_value_t = DEFAULT_ARGON2_QUEUE)]
    pub argon2_queue: usize,
}

impl PolicyArgs {
    /// The flags as the service's settings: the one place they convert.
    pub fn into_config(self) -> ServiceConfig {
        ServiceConfig::from(&self)
    }
}

impl From<&PolicyArgs> for ServiceConfig {
    fn from(args: &PolicyArgs) -> Self {
        Self {
            policy: Policy {
                min_password_chars: args.min_password_chars,
                access_ttl: Duration::from_secs(args.access_ttl_secs),
                refresh_ttl: days(args.refresh_ttl_days),
                refresh_grace: Duration::from_secs(args.refresh_grace_secs),
                session_max_age: days(args.session_max_days),
                session_idle: days(args.session_idle_days),
                throttle: ThrottlePolicy {
                    limit: args.login_failure_limit,
                    email_factor: args.login_failure_email_factor,
                    ..ThrottlePolicy::default()
                },
                legacy_hash_limits: args.legacy_hash_limits,
                credential_failure_floor: Duration::from_millis(args.credential_failure_floor_ms),
                native_id_start: crate::domain::phase::DEFAULT_NATIVE_ID_START,
            },
            argon2: args.argon2,
            argon2_queue: args.argon2_queue,
        }
    }
}

/// The admin port's Phases service: who may call it, how it follows and
/// guards the phase, and how it reaches legacy for a move's checks.
#[derive(Clone, Default)]
pub struct AdminConfig {
    /// Admin tokens; with none, every Phases call but a gateway
    /// certificate's watch and report is refused.
    pub credentials: AdminCredentials,
    pub phase: PhaseSettings,
    /// For `legacy-reachable` and `id-range-margin`; those checks fail
    /// ("legacy not configured") without it.
    pub legacy: Option<Arc<dyn LegacyProbe>>,
}

impl AdminConfig {
    /// Reads the files the flags name; every problem is reported at once.
    pub fn from_args(args: &PhaseArgs) -> anyhow::Result<Self> {
        let credentials = args
            .admin_credentials
            .as_deref()
            .map(AdminCredentials::load)
            .transpose();
        let legacy = args
            .legacy_url
            .as_deref()
            .map(|url| {
                crate::legacy::HttpLegacy::new(
                    url,
                    args.legacy_token_file.as_deref(),
                    args.legacy_ca.as_deref(),
                )
            })
            .transpose();
        match (credentials, legacy) {
            (Ok(credentials), Ok(legacy)) => Ok(Self {
                credentials: credentials.unwrap_or_default(),
                phase: args.settings(),
                legacy: legacy.map(|legacy| Arc::new(legacy) as Arc<dyn LegacyProbe>),
            }),
            (credentials, legacy) => {
                let problems: Vec<String> = [credentials.err(), legacy.err()]
                    .into_iter()
                    .flatten()
                    .map(|err| format!("{err:#}"))
                    .collect();
                anyhow::bail!("{}", problems.join("; "))
            }
        }
    }
}

/// The Phases service's flags (`idbase idsvc`).
#[derive(Clone, Debug, clap::Args)]
pub struct PhaseArgs {
    /// TOML file of admin tokens (`[[admin]]` name, role viewer|support|operator|gateway,
    /// token_sha256, optional expires) for the admin port's Phases and Admin services.
    #[arg(long, env = "IDBASE_ADMIN_CREDENTIALS")]
    pub admin_credentials: Option<PathBuf>,
    /// Milliseconds between repeats of the phase on a quiet WatchPhase stream.
    #[arg(long, env = "IDBASE_PHASE_KEEPALIVE_MS", default_value_t = DEFAULT_PHASE_KEEPALIVE_MS)]
    pub phase_keepalive_ms: u64,
    /// Milliseconds between reads of the phase row (changes made by other replicas).
    #[arg(long, env = "IDBASE_PHASE_POLL_MS", default_value_t = DEFAULT_PHASE_POLL_MS)]
    pub phase_poll_ms: u64,
    /// A gateway whose last ReportPhase is older than this many milliseconds is not live.
    #[arg(long, env = "IDBASE_GATEWAY_REPORT_TTL_MS", default_value_t = DEFAULT_GATEWAY_REPORT_TTL_MS)]
    pub gateway_report_ttl_ms: u64,
    /// First id of members registered at idbase from phase 4 (legacy's ids stay below).
    #[arg(long, env = "IDBASE_NATIVE_ID_START", default_value_t = DEFAULT_NATIVE_ID_START)]
    pub native_id_start: i64,
    /// 3→4 is refused unless legacy's highest id + this margin is below --native-id-start.
    #[arg(long, env = "IDBASE_NATIVE_ID_MARGIN", default_value_t = DEFAULT_NATIVE_ID_MARGIN)]
    pub native_id_margin: i64,
    /// Forward moves into phases 2–4 need a passing `migrate validate` at most this many milliseconds old.
    #[arg(long, env = "IDBASE_VALIDATION_MAX_AGE_MS", default_value_t = DEFAULT_VALIDATION_MAX_AGE_MS)]
    pub validation_max_age_ms: u64,
    /// The move to phase 5 needs no double write received and no legacy token exchanged for this many milliseconds (at most 30 days).
    #[arg(long, env = "IDBASE_LEGACY_QUIET_MS", default_value_t = DEFAULT_LEGACY_QUIET_MS,
          value_parser = clap::value_parser!(u64).range(0..=MAX_LEGACY_WINDOW_MS))]
    pub legacy_quiet_ms: u64,
    /// Forward moves into phases 2–4 need as many double writes received as member writes the gateways proxied to legacy over this many milliseconds (1 s to 30 days).
    #[arg(long, env = "IDBASE_PARITY_WINDOW_MS", default_value_t = DEFAULT_PARITY_WINDOW_MS,
          value_parser = clap::value_parser!(u64).range(1000..=MAX_LEGACY_WINDOW_MS))]
    pub parity_window_ms: u64,
    /// Forward moves into phases 2–4 look at the shadow reads compared over this many milliseconds (1 s to 30 days).
    #[arg(long, env = "IDBASE_SHADOW_WINDOW_MS", default_value_t = DEFAULT_SHADOW_WINDOW_MS,
          value_parser = clap::value_parser!(u64).range(1000..=MAX_LEGACY_WINDOW_MS))]
    pub shadow_window_ms: u64,
    /// When shadow reads ran in the window, forward moves into phases 2–4 need at least this many, with under 0.1% mismatches.
    #[arg(long, env = "IDBASE_SHADOW_MIN_SAMPLES", default_value_t = DEFAULT_SHADOW_MIN_SAMPLES)]
    pub shadow_min_samples: u64,
    /// …and at least this many of each kind (login, me).
    #[arg(long, env = "IDBASE_SHADOW_MIN_PER_KIND", default_value_t = DEFAULT_SHADOW_MIN_PER_KIND)]
    pub shadow_min_per_kind: u64,
    /// Legacy API base URL, only for the checks of a phase move (legacy-reachable, id-range-margin).
    #[arg(long, env = "IDBASE_LEGACY_URL")]
    pub legacy_url: Option<String>,
    /// File holding the credential sent to legacy as `Idbase-Gateway-Token`.
    #[arg(long, env = "IDBASE_LEGACY_TOKEN_FILE")]
    pub legacy_token_file: Option<PathBuf>,
    /// PEM CA bundle that signs legacy's certificate (private CA); without it
    /// `https://` legacy URLs are checked against the web PKI's roots.
    #[arg(long, env = "IDBASE_LEGACY_CA")]
    pub legacy_ca: Option<PathBuf>,
}

impl PhaseArgs {
    pub fn settings(&self) -> PhaseSettings {
        PhaseSettings {
            keepalive: Duration::from_millis(self.phase_keepalive_ms.max(1)),
            poll: Duration::from_millis(self.phase_poll_ms.max(1)),
            report_ttl: Duration::from_millis(self.gateway_report_ttl_ms),
            native_id_start: self.native_id_start,
            native_id_margin: self.native_id_margin,
            validation_max_age: Duration::from_millis(self.validation_max_age_ms),
            legacy_quiet: Duration::from_millis(self.legacy_quiet_ms),
            parity_window: Duration::from_millis(self.parity_window_ms),
            shadow_window: Duration::from_millis(self.shadow_window_ms),
            shadow_min_samples: self.shadow_min_samples,
            shadow_min_per_kind: self.shadow_min_per_kind,
        }
    }
}

/// `idbase idsvc`: the ID service as its own process.
#[derive(Clone, Debug, clap::Args)]
pub struct IdsvcArgs {
    /// `mysql://user:pass@host/db` (Aurora MySQL, MariaDB) or `sqlite://PATH`.
    #[arg(long, env = "IDBASE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Directory of PII, blind-index and signing keys (`idbase keys generate`).
    #[arg(long, env = "IDBASE_KEYS_DIR")]
    pub keys_dir: PathBuf,
    /// Identity gRPC address.
    #[arg(long, env = "IDBASE_GRPC", default_value = DEFAULT_GRPC)]
    pub grpc: SocketAddr,
    /// Admin gRPC address (kept off the public path).
    #[arg(long, env = "IDBASE_ADMIN_GRPC", default_value = DEFAULT_ADMIN_GRPC)]
    pub admin_grpc: SocketAddr,
    /// Prometheus metrics address (plain HTTP, `/metrics`); off when unset.
    #[arg(long, env = "IDBASE_METRICS")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub transport: crate::grpc::TransportArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub phases: PhaseArgs,
}

impl IdsvcArgs {
    /// The flags as the library's config: the one place they convert.
    pub fn into_config(self) -> IdsvcConfig {
        let mut service = self.policy.into_config();
        service.policy.native_id_start = self.phases.native_id_start;
        IdsvcConfig {
            service,
            phases: self.phases,
            database_url: self.database_url,
            keys_dir: self.keys_dir,
            grpc: self.grpc,
            admin_grpc: self.admin_grpc,
            metrics: self.metrics,
            transport: self.transport,
        }
    }
}

impl From<IdsvcArgs> for IdsvcConfig {
    fn from(args: IdsvcArgs) -> Self {
        args.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    /// The flags' defaults and the structs' `Default` impls are one source:
    /// parsing no flags gives the default config.
    #[test]
    fn no_flags_give_the_default_config() {
        let parsed = Flags::try_parse_from(["idsvc"]).expect("no flags parse");
        let config = parsed.policy.into_config();
        let default = ServiceConfig::default();
        assert_eq!(config.argon2, default.argon2);
        assert_eq!(config.argon2_queue, default.argon2_queue);
        assert_eq!(
            format!("{:?}", config.policy),
            format!("{:?}", default.policy)
        );
    }

    #[derive(Parser)]
    struct PhaseFlags {
        #[command(flatten)]
        phases: PhaseArgs,
    }

    #[test]
    fn phase_flags_load_their_files_and_report_every_problem_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = dir.path().join("admin.toml");
        std::fs::write(
            &credentials,
            format!(
                "[[admin]]\nname = \"alice\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n",
                crate::grpc::credentials::token_sha256_hex("t")
            ),
        )
        .expect("write");
        let path = credentials.display().to_string();
        let parsed = PhaseFlags::try_parse_from([
            "idsvc",
            "--admin-credentials",
            &path,
            "--phase-poll-ms",
            "10",
            "--native-id-start",
            "5000",
            "--legacy-url",
            "http://legacy.internal:8081/",
        ])
        .expect("flags parse");
        let config = AdminConfig::from_args(&parsed.phases).expect("loads");
        assert!(!config.credentials.is_empty());
        assert!(config.legacy.is_some());
        assert_eq!(config.phase.poll, Duration::from_millis(10));
        assert_eq!(config.phase.native_id_start, 5000);

        let parsed = PhaseFlags::try_parse_from([
            "idsvc",
            "--admin-credentials",
            "/nonexistent/admin.toml",
            "--legacy-url",
            "ftp://legacy",
        ])
        .expect("flags parse");
        let err = AdminConfig::from_args(&parsed.phases)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("/nonexistent/admin.toml") && err.contains("http(s) URL"),
            "{err}"
        );
    }

    /// `--legacy-ca` must hold a certificate: an empty or unreadable bundle
    /// is refused at start rather than found out by a phase move's checks.
    #[test]
    fn a_legacy_ca_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("ca.crt");
        std::fs::write(&empty, "").expect("write");
        for (ca, expected) in [
            (empty.display().to_string(), "holds no certificate"),
            ("/nonexistent/ca.crt".to_owned(), "/nonexistent/ca.crt"),
        ] {
            let parsed = PhaseFlags::try_parse_from([
                "idsvc",
                "--legacy-url",
                "https://legacy:8090",
                "--legacy-ca",
                &ca,
            ])
            .expect("flags parse");
            let err = AdminConfig::from_args(&parsed.phases)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn flags_reach_the_config() {
        let parsed = Flags::try_parse_from([
            "idsvc",
            "--refresh-ttl-days",
            "2",
            "--login-failure-limit",
            "3",
            "--argon2-memory-kib",
            "256",
            "--legacy-bcrypt-max-cost",
            "13",
            "--credential-failure-floor-ms",
            "80",
        ])
        .expect("flags parse");
        let config = parsed.policy.into_config();
        assert_eq!(config.policy.refresh_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(config.policy.throttle.limit, 3);
        assert_eq!(config.argon2.memory_kib, 256);
        assert_eq!(config.policy.legacy_hash_limits.bcrypt_max_cost, 13);
        assert_eq!(
            config.policy.credential_failure_floor,
            Duration::from_millis(80)
        );
    }
}
