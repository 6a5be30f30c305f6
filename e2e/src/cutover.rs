//! The phase cutover on loopback: idbase (one idsvc, N gateways) beside the
//! legacy emulator, each on its own MariaDB database, wired as production
//! wires them: the gateways proxy to legacy and follow the phase from idsvc's
//! admin port, legacy double-writes through a gateway and accepts idbase
//! access tokens against the gateway's JWKS. Phases move through the admin
//! gRPC API with an operator's token, like `idbase admin phase set`.

use crate::{
    Process, TestDatabase, Tokens, free_addr, fresh_mysql_database, generate_keys, random_token,
    sha256_hex, wait_listening, wait_ready,
};
use anyhow::{Context, bail};
/// The admin API's messages, and tonic for its statuses, for the tests.
pub use idbase_proto::v1 as pb;
use idbase_proto::v1::phases_client::PhasesClient;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
pub use tonic;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The seeded legacy members are `member-<id>@legacy.example` with the
/// password `password-<id>`, ids 1..=N.
pub fn seeded_email(id: i64) -> String {
    format!("member-{id}@legacy.example")
}

/// The password of a seeded legacy member.
pub fn seeded_password(id: i64) -> String {
    format!("password-{id}")
}

/// Whether a member falls in a ramp's share, as the gateways decide it:
/// HMAC-SHA256 over the normalised email (trimmed, lower-cased) keyed with
/// the phase's ramp key; the first 8 bytes, big-endian, modulo 100, below
/// the weight.
pub fn in_ramp(ramp_key: &[u8], email: &str, weight: u32) -> anyhow::Result<bool> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(ramp_key)?;
    mac.update(email.trim().to_lowercase().as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Ok(u64::from_be_bytes(first) % 100 < u64::from(weight))
}

/// The legacy fixture's mapping (the emulator keeps its members in that
/// layout), for the migration jobs.
pub fn legacy_mapping() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/legacy/mapping.toml")
}

/// What to start.
pub struct CutoverOptions<'a> {
    /// The `idbase` binary under test.
    pub binary: &'a Path,
    /// Extra idsvc flags (e.g. [`crate::CHEAP_ARGON2`]).
    pub idsvc_args: &'a [&'a str],
    /// Gateways, each with its own `--gateway-id gw-N`.
    pub gateways: usize,
    /// Extra flags for every gateway.
    pub gateway_args: &'a [&'a str],
    /// Members the emulator seeds (`--seed-members`).
    pub seed_members: u32,
    /// Legacy double-writes through the first gateway; `false` stands for a
    /// legacy whose double writes were never switched on.
    pub double_writes: bool,
}

/// One gateway of a [`Cutover`].
pub struct CutoverGateway {
    /// `gw-N`, its `--gateway-id`.
    pub id: String,
    pub url: String,
    /// Its `/metrics` listener (`http://…`).
    pub metrics_url: String,
    pub process: Process,
}

/// A running cutover deployment.
///
/// Dropping it stops the gateways, the emulator and idsvc before their
/// databases go (fields drop in order).
pub struct Cutover {
    pub gateways: Vec<CutoverGateway>,
    _legacy: LegacyEmulator,
    idsvc: Option<Process>,
    /// The emulator's base URL.
    pub legacy_url: String,
    /// The gateways' client tokens (`legacy-web` internal, `web`, `ios` mobile).
    pub tokens: Tokens,
    /// idsvc's admin gRPC endpoint (`http://…`).
    pub admin_url: String,
    /// idsvc's database, for the migration jobs and checks.
    pub idbase_database: TestDatabase,
    /// The emulator's database.
    pub legacy_database: TestDatabase,
    operator_token: String,
    /// The credential legacy demands (`Idbase-Gateway-Token`).
    pub legacy_token: String,
    binary: PathBuf,
    keys: PathBuf,
    idsvc_command: Vec<String>,
    idsvc_grpc: String,
    admin_addr: String,
    dir: tempfile::TempDir,
}

/// A phase client that presents the operator's bearer token.
pub type AdminClient = PhasesClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A gateway's `/readyz` body (design: "/readyz (gateway)").
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Readyz {
    pub status: String,
    pub idsvc: bool,
    pub legacy: Option<bool>,
    pub phase: Option<u32>,
    pub weight: Option<u32>,
    pub generation: Option<u64>,
    pub write_fence: bool,
    pub stale_ms: Option<u64>,
    pub reasons: Vec<String>,
}

impl Cutover {
    /// Starts idsvc, the gateways and the emulator on two fresh databases,
    /// and waits until every gateway is ready (it learned phase 0).
    pub async fn start(options: CutoverOptions<'_>) -> anyhow::Result<Self> {
        let binary = options.binary.to_owned();
        let idbase_database = fresh_mysql_database().await?;
        let legacy_database = fresh_mysql_database().await?;
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        generate_keys(&binary, &keys)?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };

        let tokens = Tokens {
            internal: random_token(),
            web: random_token(),
            mobile: random_token(),
        };
        let clients = write(
            "clients.toml",
            &format!(
                "[[client]]\nid = \"legacy-web\"\nclass = \"internal\"\ntoken_sha256 = \"{}\"\n\
                 [[client]]\nid = \"web\"\nclass = \"web\"\ntoken_sha256 = \"{}\"\n\
                 [[client]]\nid = \"ios\"\nclass = \"mobile\"\ntoken_sha256 = \"{}\"\n",
                sha256_hex(&tokens.internal),
                sha256_hex(&tokens.web),
                sha256_hex(&tokens.mobile)
            ),
        )?;
        let internal_token = write("internal-client-token", &tokens.internal)?;
        let operator_token = random_token();
        let gateway_admin_token = random_token();
        let admin_credentials = write(
            "admin-credentials.toml",
            &format!(
                "[[admin]]\nname = \"e2e-operator\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\
                 [[admin]]\nname = \"e2e-gateways\"\nrole = \"gateway\"\ntoken_sha256 = \"{}\"\n",
                sha256_hex(&operator_token),
                sha256_hex(&gateway_admin_token)
            ),
        )?;
        let gateway_admin_token = write("gateway-admin-token", &gateway_admin_token)?;
        // What legacy demands of its callers (`Idbase-Gateway-Token`): the
        // gateways' and idsvc's credential at legacy.
        let legacy_token_value = random_token();
        let legacy_token = write("legacy-token", &legacy_token_value)?;

        let legacy_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let legacy_addr = legacy_listener.local_addr()?.to_string();
        let legacy_url = format!("http://{legacy_addr}");
        let idsvc_grpc = free_addr()?;
        let admin_addr = free_addr()?;
        let log_level = std::env::var("IDBASE_E2E_LOG").unwrap_or_else(|_| "warn".into());

        let mut idsvc_command: Vec<String> = [
            "idsvc",
            "--database-url",
            idbase_database.url(),
            "--admin-grpc",
            &admin_addr,
            "--insecure-plaintext",
            "--legacy-url",
            &legacy_url,
            // The move to 5 waits for 2 s without legacy activity (an hour
            // by default); `move_to` waits it out through the checks.
            "--legacy-quiet-ms",
            "2000",
            // A test's traffic is a shop's minute at most: whatever shadow
            // reads it runs must agree, however few.
            "--shadow-min-samples",
            "0",
            "--shadow-min-per-kind",
            "0",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        idsvc_command.extend(
            [
                ("--keys-dir", &keys),
                ("--admin-credentials", &admin_credentials),
                ("--legacy-token-file", &legacy_token),
            ]
            .into_iter()
            .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()]),
        );
        idsvc_command.extend(options.idsvc_args.iter().map(|a| (*a).to_owned()));

        let idsvc = spawn_idsvc(&binary, &idsvc_command, &idsvc_grpc)?;
        wait_listening(&idsvc_grpc).await?;
        wait_listening(&admin_addr).await?;
        let admin_url = format!("http://{admin_addr}");

        let mut gateways = Vec::new();
        for n in 1..=options.gateways {
            let id = format!("gw-{n}");
            let (http, metrics) = (free_addr()?, free_addr()?);
            let process = Command::new(&binary)
                .args(["gateway", "--idsvc", &format!("http://{idsvc_grpc}")])
                .args(["--http", &http, "--metrics", &metrics])
                .arg("--clients")
                .arg(&clients)
                .args(["--legacy-url", &legacy_url, "--legacy-token-file"])
                .arg(&legacy_token)
                .args(["--idsvc-admin", &admin_url, "--idsvc-admin-token-file"])
                .arg(&gateway_admin_token)
                .args(["--gateway-id", &id])
                .args(options.gateway_args)
                // Tests register many members from loopback.
                .env("IDBASE_REGISTRATIONS_PER_MINUTE", "0")
                .env("RUST_LOG", &log_level)
                .stdout(Stdio::null())
                .spawn()
                .context("starting gateway")?;
            gateways.push(CutoverGateway {
                id,
                url: format!("http://{http}"),
                metrics_url: format!("http://{metrics}"),
                process: Process(process),
            });
        }

        // Legacy double-writes through the first gateway and verifies idbase
        // access tokens against its JWKS.
        let first = gateways.first().context("a cutover needs a gateway")?;
        let double_write = [
            "--double-write-to",
            &first.url,
            "--client-token-file",
            &internal_token.display().to_string(),
        ];
        let double_write = if options.double_writes {
            &double_write[..]
        } else {
            &[]
        };
        let legacy_args: Vec<String> = double_write
            .iter()
            .chain(&[
                "--database-url",
                legacy_database.url(),
                "--jwks-url",
                &format!("{}/.well-known/jwks.json", first.url),
                "--gateway-token-file",
                &legacy_token.display().to_string(),
                "--seed-members",
                &options.seed_members.to_string(),
            ])
            .map(|a| (*a).to_owned())
            .collect();
        let legacy = LegacyEmulator::start(&legacy_args, legacy_listener)?;
        wait_listening(&legacy_addr).await?;
        for gateway in &gateways {
            wait_ready(&gateway.url).await?;
        }
        Ok(Self {
            gateways,
            legacy_url,
            tokens,
            admin_url,
            idbase_database,
            legacy_database,
            operator_token,
            legacy_token: legacy_token_value,
            binary,
            keys,
            idsvc_command,
            idsvc: Some(idsvc),
            idsvc_grpc,
            admin_addr,
            _legacy: legacy,
            dir,
        })
    }

    /// The gateways' URLs.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.url.clone()).collect()
    }

    /// A phase client with the operator's token (a fresh connection).
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        admin_client(&self.admin_url, &self.operator_token).await
    }

    /// The current phase state as idsvc stores it.
    pub async fn phase(&self) -> anyhow::Result<pb::PhaseState> {
        Ok(self
            .admin()
            .await?
            .get_phase(pb::GetPhaseRequest {})
            .await?
            .into_inner())
    }

    /// One SetPhase at the current generation; the status as idsvc answered
    /// (refusals included). Does not wait for the gateways.
    pub async fn set_phase(
        &self,
        target: u32,
        weight: u32,
    ) -> anyhow::Result<Result<pb::SetPhaseResponse, tonic::Status>> {
        let mut admin = self.admin().await?;
        let current = admin.get_phase(pb::GetPhaseRequest {}).await?.into_inner();
        Ok(admin
            .set_phase(pb::SetPhaseRequest {
                target,
                weight,
                expected_generation: current.generation,
                force: false,
                reason: format!("e2e: to {target} at {weight}%"),
            })
            .await
            .map(tonic::Response::into_inner))
    }

    /// The check `name` of the move to `target` at `weight`, as CheckPhase answers.
    pub async fn check(
        &self,
        target: u32,
        weight: u32,
        name: &str,
    ) -> anyhow::Result<pb::PhaseCheck> {
        let mut admin = self.admin().await?;
        let checked = admin
            .check_phase(pb::CheckPhaseRequest { target, weight })
            .await?;
        checked
            .into_inner()
            .checks
            .into_iter()
            .find(|check| check.name == name)
            .with_context(|| format!("the move to {target} has no check {name}"))
    }

    /// Waits until CheckPhase finds the move to `target` at `weight` ready
    /// (the gateways report, legacy answers, …); the last checks when not
    /// within 15 s.
    pub async fn wait_checks(&self, target: u32, weight: u32) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let checks = admin
                .check_phase(pb::CheckPhaseRequest { target, weight })
                .await?
                .into_inner();
            if checks.ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the move to {target} at {weight}% is not ready within 15 s: {checks:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves to `target` at `weight` once its checks pass, waits until any
    /// write fence is lifted and every gateway routes by the settled
    /// generation; returns that state.
    pub async fn move_to(&self, target: u32, weight: u32) -> anyhow::Result<pb::PhaseState> {
        self.wait_checks(target, weight).await?;
        if let Err(status) = self.set_phase(target, weight).await? {
            bail!("moving to {target} at {weight}%: {status:?}");
        }
        self.settle().await
    }

    /// Waits until the stored state has no write fence and every gateway's
    /// `/readyz` shows its generation; returns that state.
    pub async fn settle(&self) -> anyhow::Result<pb::PhaseState> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let state = loop {
            let state = self.phase().await?;
            if !state.write_fence {
                break state;
            }
            if Instant::now() > deadline {
                bail!(
                    "the write fence of generation {} was not lifted within 15 s",
                    state.generation
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.wait_gateways_at(state.generation, Duration::from_secs(15))
            .await?;
        Ok(state)
    }

    /// Waits until every gateway's `/readyz` shows `generation` (or later);
    /// returns how long that took.
    pub async fn wait_gateways_at(
        &self,
        generation: u64,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        wait_generation(&self.gateway_urls(), generation, within).await
    }

    /// SIGKILLs idsvc (both its ports go).
    pub fn kill_idsvc(&mut self) -> anyhow::Result<()> {
        if let Some(mut idsvc) = self.idsvc.take() {
            idsvc.0.kill()?;
            idsvc.0.wait()?;
        }
        Ok(())
    }

    /// Starts idsvc (again) on its addresses and waits until both ports
    /// accept connections.
    pub async fn restart_idsvc(&mut self) -> anyhow::Result<()> {
        self.kill_idsvc()?;
        self.idsvc = Some(spawn_idsvc(
            &self.binary,
            &self.idsvc_command,
            &self.idsvc_grpc,
        )?);
        wait_listening(&self.idsvc_grpc).await?;
        wait_listening(&self.admin_addr).await
    }

    /// Copies legacy's members into idbase as the runbook does once double
    /// writes are on (phase 1): `idbase migrate bulkload` from the emulator's
    /// database, then `backfill`, then `validate` (which the moves into
    /// phases 2–4 require). Under a client load a write in flight can show
    /// as a difference for a moment, so validate runs again, up to three
    /// times in all, as an operator would rerun it; a lasting difference
    /// fails.
    pub fn migrate_members(&self) -> anyhow::Result<()> {
        self.migrate("bulkload")?;
        self.migrate("backfill")?;
        let mut attempt = 1;
        while let Err(error) = self.migrate("validate") {
            if attempt == 3 {
                return Err(error);
            }
            attempt += 1;
        }
        Ok(())
    }

    /// Runs one `idbase migrate` job against idsvc's database (the
    /// emulator's database as the source).
    fn migrate(&self, job: &str) -> anyhow::Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .args(["migrate", job, "--database-url", &self.idbase_database])
            .arg("--keys-dir")
            .arg(&self.keys)
            .arg("--quiet");
        if job != "backfill" {
            command
                .args(["--source", &self.legacy_database, "--mapping"])
                .arg(legacy_mapping());
        }
        let output = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running idbase migrate {job}"))?;
        if !output.status.success() {
            bail!(
                "idbase migrate {job} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The working directory of this deployment (keys, credentials).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `idbase idsvc …` on `grpc`.
fn spawn_idsvc(binary: &Path, command: &[String], grpc: &str) -> anyhow::Result<Process> {
    let log_level = std::env::var("IDBASE_E2E_LOG").unwrap_or_else(|_| "warn".into());
    Ok(Process(
        Command::new(binary)
            .args(command)
            .args(["--grpc", grpc])
            .env("RUST_LOG", log_level)
            .stdout(Stdio::null())
            .spawn()
            .context("starting idsvc")?,
    ))
}

/// A phase client at `admin_url` presenting `token`.
pub async fn admin_client(admin_url: &str, token: &str) -> anyhow::Result<AdminClient> {
    let channel = Channel::from_shared(admin_url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to idsvc's admin port {admin_url}"))?;
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    Ok(PhasesClient::with_interceptor(channel, Bearer(bearer)))
}

/// A gateway's `/readyz`, ready or not.
pub async fn readyz(http: &reqwest::Client, gateway_url: &str) -> anyhow::Result<Readyz> {
    let answer = http.get(format!("{gateway_url}/readyz")).send().await?;
    let text = answer.text().await?;
    serde_json::from_str(&text).with_context(|| format!("/readyz of {gateway_url}: {text}"))
}

/// Polls every gateway's `/readyz` (each on its own) until each shows
/// `generation` (or later); returns when the slowest had it.
///
/// A gateway's `/readyz` reads the phase before its health checks (which
/// call idsvc and legacy and take longer than following does), so the time a
/// poll was sent, not answered, is when the gateway was seen routing by the
/// generation (give or take the request's way in).
pub async fn wait_generation(
    gateways: &[String],
    generation: u64,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut polls = tokio::task::JoinSet::new();
    for url in gateways {
        polls.spawn(poll_generation(url.clone(), generation, started, within));
    }
    let mut slowest = Duration::ZERO;
    while let Some(seen) = polls.join_next().await {
        slowest = slowest.max(seen??);
    }
    Ok(slowest)
}

/// When (since `started`) the poll that first saw `generation` at `url` was sent.
async fn poll_generation(
    url: String,
    generation: u64,
    started: Instant,
    within: Duration,
) -> anyhow::Result<Duration> {
    let http = reqwest::Client::new();
    loop {
        let sent = started.elapsed();
        let ready = readyz(&http, &url).await;
        if ready.is_ok_and(|r| r.generation.is_some_and(|g| g >= generation)) {
            return Ok(sent);
        }
        if started.elapsed() > within {
            bail!("gateway {url} did not reach generation {generation} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The legacy emulator ([`crate::legacy`]) served from this process, on a
/// runtime and thread of its own (so the test's runtime does not serve it),
/// until dropped. In-process rather than its `legacy` binary: the black-box
/// tests are the root package's, and cargo builds only that package's
/// binaries for them; the emulator's code is linked into the tests already.
pub struct LegacyEmulator {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl LegacyEmulator {
    /// Starts the emulator with its command-line `args` on `listener`.
    pub fn start(args: &[String], listener: std::net::TcpListener) -> anyhow::Result<Self> {
        use clap::Parser;
        let config = crate::legacy::LegacyArgs::try_parse_from(
            std::iter::once("legacy").chain(args.iter().map(String::as_str)),
        )?
        .config()?;
        listener.set_nonblocking(true)?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("legacy-emulator")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("legacy-emulator".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    crate::legacy::serve(listener, config, async move {
                        let _ = stop.await;
                    })
                    .await
                })
            })?;
        Ok(Self {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for LegacyEmulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
