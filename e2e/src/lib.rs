//! Black-box harness: runs the built `idbase` binary as separate idsvc and
//! gateway processes on loopback against MariaDB, as production does.

pub mod legacy;

use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
pub use testdb::{TestDatabase, fresh_mysql_database};

pub mod cutover;

/// Builds `idbase` (once per process, in the caller's profile) and returns its
/// path: for the benches. The black-box tests take the binary cargo built for
/// them (`CARGO_BIN_EXE_idbase`), so a test run compiles the service once.
pub fn idbase_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = !cfg!(debug_assertions);
            // A target dir of its own: `idbase` alone unifies dependency
            // features differently from the bench build that calls us, and
            // in a shared dir each build would rebuild the other's.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from)
                .join("e2e-idbase");
            let mut build = Command::new(cargo);
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "--bin", "idbase", "--target-dir"])
                .arg(&target);
            if release {
                build.arg("--release");
            }
            let status = build.status().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("cargo build --bin idbase failed: {status}"));
            }
            Ok(target
                .join(if release { "release" } else { "debug" })
                .join("idbase"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `idbase keys generate --out DIR`: a fresh key ring for a deployment or job.
pub fn generate_keys(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .args(["keys", "generate", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("idbase keys generate failed");
    }
    Ok(())
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The gateway the API tests talk to: a [`Deployment`] they start, or an
/// already deployed one (a kind cluster, `e2e/kind/run.sh`) named by
/// `IDBASE_E2E_GATEWAY_URL` with its client tokens in the JSON file
/// `IDBASE_E2E_CLIENT_TOKENS_FILE` (`{"clients": {"internal", "web", "mobile"}}`);
/// its metrics listener, if reachable, by `IDBASE_E2E_GATEWAY_METRICS_URL`.
pub struct Target {
    pub gateway_url: String,
    /// The gateway's metrics listener (`--metrics`), when the suite can reach it.
    pub metrics_url: Option<String>,
    pub tokens: Tokens,
    /// The processes behind `gateway_url` when this suite started them.
    pub local: Option<Deployment>,
    /// The database of `local`, dropped after it.
    _database: Option<TestDatabase>,
}

impl Target {
    /// The deployed gateway when the environment names one, else a fresh
    /// local deployment on a new MariaDB database.
    pub async fn deployed_or_start(options: Options<'_>) -> anyhow::Result<Self> {
        if let Ok(gateway_url) = std::env::var("IDBASE_E2E_GATEWAY_URL") {
            let file = std::env::var("IDBASE_E2E_CLIENT_TOKENS_FILE").context(
                "IDBASE_E2E_GATEWAY_URL is set, so IDBASE_E2E_CLIENT_TOKENS_FILE must name its client tokens",
            )?;
            let tokens = Tokens::from_credentials_file(Path::new(&file))?;
            let metrics_url = std::env::var("IDBASE_E2E_GATEWAY_METRICS_URL")
                .ok()
                .map(|url| url.trim_end_matches('/').to_owned());
            return Ok(Self {
                gateway_url: gateway_url.trim_end_matches('/').to_owned(),
                metrics_url,
                tokens,
                local: None,
                _database: None,
            });
        }
        let database = fresh_mysql_database().await?;
        let local = Deployment::start(&database, options).await?;
        Ok(Self {
            gateway_url: local.gateway_url.clone(),
            metrics_url: Some(local.gateway_metrics_url.clone()),
            tokens: local.tokens.clone(),
            local: Some(local),
            _database: Some(database),
        })
    }
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Process {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process {pid} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client tokens of a running deployment.
#[derive(Clone, serde::Deserialize)]
pub struct Tokens {
    pub internal: String,
    pub web: String,
    pub mobile: String,
}

impl Tokens {
    /// Reads `{"clients": {"internal": …, "web": …, "mobile": …}}`, the file
    /// `e2e/kind/run.sh` writes.
    fn from_credentials_file(path: &Path) -> anyhow::Result<Self> {
        #[derive(serde::Deserialize)]
        struct Credentials {
            clients: Tokens,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading client tokens from {}", path.display()))?;
        let credentials: Credentials = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a credentials file", path.display()))?;
        Ok(credentials.clients)
    }
}

/// idsvc + gateway as two processes on a fresh MariaDB database (or, with
/// [`Deployment::start_cluster`], several idsvc processes on the same
/// database behind one gateway).
pub struct Deployment {
    pub gateway_url: String,
    /// The gateway's metrics listener (`--metrics`): Prometheus `/metrics`.
    pub gateway_metrics_url: String,
    pub tokens: Tokens,
    /// The first (preferred) idsvc.
    pub idsvc: Process,
    pub gateway: Process,
    /// The idsvc gRPC addresses in the gateway's preference order.
    pub idsvc_grpc: Vec<String>,
    /// idsvc processes after the first, in order (`None` once killed).
    pub more_idsvc: Vec<Option<Process>>,
    idsvc_launch: IdsvcLaunch,
    gateway_launch: GatewayLaunch,
    _dir: tempfile::TempDir,
}

/// How to start a gateway in front of a deployment's idsvc processes.
struct GatewayLaunch {
    binary: PathBuf,
    endpoints: String,
    clients_file: PathBuf,
    log_level: String,
}

impl GatewayLaunch {
    fn spawn(&self, http: &str, metrics: &str, args: &[&str]) -> anyhow::Result<Process> {
        Ok(Process(
            Command::new(&self.binary)
                .args(["gateway", "--idsvc", &self.endpoints, "--http", http])
                .args(["--metrics", metrics])
                .arg("--clients")
                .arg(&self.clients_file)
                .args(args)
                // Tests and benchmarks register many members from loopback:
                // the per-address registration rule is off unless a test
                // passes `--registrations-per-minute` (a flag beats the env).
                .env("IDBASE_REGISTRATIONS_PER_MINUTE", "0")
                .env("RUST_LOG", &self.log_level)
                .stdout(Stdio::null())
                .spawn()
                .context("starting gateway")?,
        ))
    }
}

/// How to (re)start an idsvc process of a deployment.
struct IdsvcLaunch {
    binary: PathBuf,
    database_url: String,
    keys: PathBuf,
    args: Vec<String>,
    log_level: String,
}

impl IdsvcLaunch {
    fn spawn(&self, grpc: &str) -> anyhow::Result<Process> {
        let admin = free_addr()?;
        Ok(Process(
            Command::new(&self.binary)
                .args([
                    "idsvc",
                    "--database-url",
                    &self.database_url,
                    "--grpc",
                    grpc,
                    "--admin-grpc",
                    &admin,
                    // Loopback processes; mTLS has its own tests (idsvc/tests/it/mtls.rs).
                    "--insecure-plaintext",
                ])
                .arg("--keys-dir")
                .arg(&self.keys)
                .args(&self.args)
                .env("RUST_LOG", &self.log_level)
                .stdout(Stdio::null())
                .spawn()
                .context("starting idsvc")?,
        ))
    }
}

/// Several idsvc endpoints behind one gateway.
pub struct Cluster<'a> {
    /// idsvc processes, all on the same database.
    pub idsvcs: usize,
    /// Extra gateway flags (e.g. upstream timeouts).
    pub gateway_args: &'a [&'a str],
    /// Addresses listed before the idsvc processes in `--idsvc` (e.g. a
    /// refusing or blackholed endpoint the caller controls).
    pub leading_endpoints: &'a [String],
}

/// idsvc's flags for [`idsvc::crypto::PasswordParams::CHEAP`] (argon2id at a
/// cost that keeps functional tests and non-login benches fast; the scheme
/// and code path are still production's). A test below holds the two equal.
pub const CHEAP_ARGON2: &[&str] = &[
    "--argon2-memory-kib",
    "256",
    "--argon2-iterations",
    "1",
    "--argon2-parallelism",
    "1",
];

/// What to run: the `idbase` binary and extra idsvc flags (e.g.
/// [`CHEAP_ARGON2`] for functional tests).
pub struct Options<'a> {
    pub binary: &'a Path,
    pub idsvc_args: &'a [&'a str],
}

impl Deployment {
    pub async fn start(database_url: &str, options: Options<'_>) -> anyhow::Result<Self> {
        Self::start_with_gateway_args(database_url, options, &[]).await
    }

    /// Like [`Deployment::start`], with extra gateway flags (WAF, anomaly
    /// detection, trusted proxies).
    pub async fn start_with_gateway_args(
        database_url: &str,
        options: Options<'_>,
        gateway_args: &[&str],
    ) -> anyhow::Result<Self> {
        let single = Cluster {
            idsvcs: 1,
            gateway_args,
            leading_endpoints: &[],
        };
        Self::start_cluster(database_url, options, single).await
    }

    pub async fn start_cluster(
        database_url: &str,
        options: Options<'_>,
        cluster: Cluster<'_>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(cluster.idsvcs >= 1, "a deployment needs an idsvc");
        let binary = options.binary.to_owned();
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        generate_keys(&binary, &keys)?;
        let tokens = Tokens {
            internal: random_token(),
            web: random_token(),
            mobile: random_token(),
        };
        let clients = format!(
            "[[client]]\nid = \"legacy-web\"\nclass = \"internal\"\ntoken_sha256 = \"{}\"\n\
             [[client]]\nid = \"web\"\nclass = \"web\"\ntoken_sha256 = \"{}\"\n\
             [[client]]\nid = \"ios\"\nclass = \"mobile\"\ntoken_sha256 = \"{}\"\n",
            sha256_hex(&tokens.internal),
            sha256_hex(&tokens.web),
            sha256_hex(&tokens.mobile)
        );
        let clients_file = dir.path().join("clients.toml");
        std::fs::write(&clients_file, clients)?;
        let http = free_addr()?;
        let log_level = std::env::var("IDBASE_E2E_LOG").unwrap_or_else(|_| "warn".into());
        let launch = IdsvcLaunch {
            binary: binary.clone(),
            database_url: database_url.to_owned(),
            keys,
            args: options.idsvc_args.iter().map(|a| (*a).to_owned()).collect(),
            log_level: log_level.clone(),
        };
        let idsvc_grpc = (0..cluster.idsvcs)
            .map(|_| free_addr())
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One after another: each idsvc applies the schema migrations at
        // start, and two doing so at once on a fresh database collide.
        let idsvc = launch.spawn(&idsvc_grpc[0])?;
        wait_listening(&idsvc_grpc[0]).await?;
        let mut more_idsvc = Vec::new();
        for grpc in &idsvc_grpc[1..] {
            more_idsvc.push(Some(launch.spawn(grpc)?));
            wait_listening(grpc).await?;
        }
        let endpoints = cluster
            .leading_endpoints
            .iter()
            .cloned()
            .chain(idsvc_grpc.iter().map(|grpc| format!("http://{grpc}")))
            .collect::<Vec<_>>()
            .join(",");
        let gateway_launch = GatewayLaunch {
            binary,
            endpoints,
            clients_file,
            log_level,
        };
        let metrics = free_addr()?;
        let gateway = gateway_launch.spawn(&http, &metrics, cluster.gateway_args)?;
        let deployment = Self {
            gateway_url: format!("http://{http}"),
            gateway_metrics_url: format!("http://{metrics}"),
            tokens,
            idsvc,
            gateway,
            idsvc_grpc,
            more_idsvc,
            idsvc_launch: launch,
            gateway_launch,
            _dir: dir,
        };
        wait_ready(&deployment.gateway_url).await?;
        Ok(deployment)
    }

    /// Starts one more gateway in front of the same idsvc processes, with its
    /// own flags, and returns it with its URL once it is ready.
    pub async fn add_gateway(&self, args: &[&str]) -> anyhow::Result<(Process, String)> {
        let http = free_addr()?;
        let gateway = self.gateway_launch.spawn(&http, &free_addr()?, args)?;
        let url = format!("http://{http}");
        wait_ready(&url).await?;
        Ok((gateway, url))
    }

    /// SIGKILLs the `n`-th idsvc (0 is the preferred one) and reaps it.
    pub fn kill_idsvc(&mut self, n: usize) -> anyhow::Result<()> {
        let process = if n == 0 {
            &mut self.idsvc
        } else {
            match self.more_idsvc.get_mut(n - 1).and_then(Option::as_mut) {
                Some(process) => process,
                None => bail!("no running idsvc {n}"),
            }
        };
        process.0.kill()?;
        process.0.wait()?;
        if n > 0 {
            self.more_idsvc[n - 1] = None;
        }
        Ok(())
    }

    /// Starts the `n`-th idsvc again on its address, and waits until it
    /// accepts connections.
    pub async fn restart_idsvc(&mut self, n: usize) -> anyhow::Result<()> {
        let grpc = self.idsvc_grpc.get(n).context("no such idsvc")?.clone();
        let process = self.idsvc_launch.spawn(&grpc)?;
        if n == 0 {
            self.idsvc = process;
        } else {
            self.more_idsvc[n - 1] = Some(process);
        }
        wait_listening(&grpc).await
    }
}

/// Waits until the gateway at `url` answers `/readyz`.
pub(crate) async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ready = client.get(format!("{url}/readyz")).send().await;
        if ready.is_ok_and(|answer| answer.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gateway at {url} not ready within 60 s")
}

/// Waits until an idsvc accepts connections on `grpc`.
pub(crate) async fn wait_listening(grpc: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        if Instant::now() > deadline {
            bail!("idsvc not listening on {grpc} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of a gateway upstream metric for one endpoint in Prometheus text
/// (0 when the series does not exist yet).
pub fn upstream_metric(text: &str, name: &str, endpoint: &str) -> f64 {
    let series = format!("{name}{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use idsvc::crypto::PasswordParams;

    #[derive(Parser)]
    struct Argon2Flags {
        #[command(flatten)]
        argon2: PasswordParams,
    }

    #[test]
    fn cheap_argon2_flags_are_idsvcs_cheap_params() {
        let args = std::iter::once("idsvc").chain(super::CHEAP_ARGON2.iter().copied());
        let parsed = Argon2Flags::try_parse_from(args).expect("the flags parse");
        assert_eq!(parsed.argon2, PasswordParams::CHEAP);
    }
}
