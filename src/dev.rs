//! `idbase dev`: idsvc and gateway in one process on SQLite under a data
//! directory, with keys and client credentials made on first start.
//!
//! Everything under the data directory is secret (keys, client tokens, the
//! members' database), so the directory is 0700 and every file in it 0600,
//! whatever the umask: the keys and credentials are created so, and the
//! SQLite file is created 0600 before SQLite opens it (its `-wal` and `-shm`
//! files take the database file's mode).

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use gateway::clients::{ClientClass, Clients};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the SQLite database, keys and dev credentials live.
    #[arg(long, env = "IDBASE_DATA_DIR", default_value = ".idbase")]
    data_dir: PathBuf,
    /// Gateway HTTP address.
    #[arg(long, env = "IDBASE_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// idsvc gRPC address.
    #[arg(long, env = "IDBASE_GRPC", default_value = idsvc::config::DEFAULT_GRPC)]
    grpc: SocketAddr,
    /// idsvc admin gRPC address.
    #[arg(long, env = "IDBASE_ADMIN_GRPC", default_value = idsvc::config::DEFAULT_ADMIN_GRPC)]
    admin_grpc: SocketAddr,
    /// Prometheus metrics address (gateway and idsvc of this process); off when unset.
    #[arg(long, env = "IDBASE_METRICS")]
    metrics: Option<SocketAddr>,
    /// The legacy member API the gateway routes to by phase (and idsvc's
    /// phase checks reach); without it everything goes to idbase.
    #[arg(long, env = "IDBASE_LEGACY_URL", value_parser = http_url)]
    legacy_url: Option<String>,
    /// File holding the gateway's credential at legacy (sent as `Idbase-Gateway-Token`).
    #[arg(long, env = "IDBASE_LEGACY_TOKEN_FILE", requires = "legacy_url")]
    legacy_token_file: Option<PathBuf>,
    #[command(flatten)]
    policy: idsvc::PolicyArgs,
}

fn http_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("the legacy URL is http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the legacy URL names no host".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `<data-dir>/dev-credentials.json` (mode 0600).
#[derive(Serialize, Deserialize)]
struct DevCredentials {
    clients: BTreeMap<String, String>,
    admin_token: String,
}

const CLASSES: [(&str, ClientClass); 3] = [
    ("internal", ClientClass::Internal),
    ("web", ClientClass::Web),
    ("mobile", ClientClass::Mobile),
];

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn credentials(data_dir: &Path) -> anyhow::Result<DevCredentials> {
    let path = data_dir.join("dev-credentials.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()));
    }
    let credentials = DevCredentials {
        clients: CLASSES
            .iter()
            .map(|(name, _)| (name.to_string(), new_token()))
            .collect(),
        admin_token: new_token(),
    };
    idsvc::crypto::keys::write_private(
        &path,
        serde_json::to_string_pretty(&credentials)?.as_bytes(),
    )?;
    Ok(credentials)
}

/// `<data-dir>/admin-credentials.toml`: idsvc's admin credentials file.
const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.toml";
/// `<data-dir>/gateway-admin-token`: the token dev's gateway watches the
/// phase with (role `gateway`: WatchPhase and ReportPhase only).
const GATEWAY_ADMIN_TOKEN_FILE: &str = "gateway-admin-token";

/// One `[[admin]]` entry of idsvc's admin credentials file.
#[derive(Serialize)]
struct AdminEntry {
    name: &'static str,
    role: &'static str,
    token_sha256: String,
}

#[derive(Serialize)]
struct AdminCredentials {
    admin: Vec<AdminEntry>,
}

fn sha256_hex(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The gateway's admin token: made once, then read back.
fn gateway_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(GATEWAY_ADMIN_TOKEN_FILE);
    if path.exists() {
        let token =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(token.trim().to_owned());
    }
    let token = new_token();
    idsvc::crypto::keys::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Writes idsvc's admin credentials file (again on every start, so it
/// always matches `dev-credentials.json`): operator `dev` with
/// `admin_token`, and `gateway` for dev's own gateway. Returns its path.
fn admin_credentials(
    data_dir: &Path,
    credentials: &DevCredentials,
    gateway_token: &str,
) -> anyhow::Result<PathBuf> {
    let file = AdminCredentials {
        admin: vec![
            AdminEntry {
                name: "dev",
                role: "operator",
                token_sha256: sha256_hex(&credentials.admin_token),
            },
            AdminEntry {
                name: "gateway",
                role: "gateway",
                token_sha256: sha256_hex(gateway_token),
            },
        ],
    };
    let path = data_dir.join(ADMIN_CREDENTIALS_FILE);
    let text = format!(
        "# Written by `idbase dev` on every start from dev-credentials.json; edits are lost.\n{}",
        toml::to_string(&file)?
    );
    idsvc::crypto::keys::write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// The data directory, ready for the service: private, with keys,
/// credentials and the database file in it.
struct DataDir {
    keys_dir: PathBuf,
    credentials: DevCredentials,
    database_url: String,
    admin_credentials: PathBuf,
    gateway_admin_token: PathBuf,
}

fn prepare(data_dir: &Path) -> anyhow::Result<DataDir> {
    private_dir(data_dir)?;
    let keys_dir = data_dir.join("keys");
    if !idsvc::crypto::KeyRing::exists_in(&keys_dir) {
        idsvc::crypto::KeyRing::generate(&keys_dir)?;
        println!(
            "Created development keys in {} (mode 0600).",
            keys_dir.display()
        );
    }
    let credentials = credentials(data_dir)?;
    let gateway_token = gateway_admin_token(data_dir)?;
    let admin_credentials = admin_credentials(data_dir, &credentials, &gateway_token)?;
    let database = data_dir.join("idbase.db");
    private_file(&database)?;
    Ok(DataDir {
        keys_dir,
        credentials,
        database_url: format!("sqlite://{}", database.display()),
        admin_credentials,
        gateway_admin_token: data_dir.join(GATEWAY_ADMIN_TOKEN_FILE),
    })
}

/// What dev's idsvc and gateway need for the phase cutover, as the flags
/// of `idbase idsvc` and `idbase gateway` name it: idsvc checks admin
/// calls against the credentials file and reaches legacy for its checks;
/// the gateway follows the phase on dev's own admin port and routes to
/// legacy.
struct Cutover {
    admin_credentials: PathBuf,
    /// dev's own admin port, `http://` on loopback.
    admin_url: String,
    gateway_admin_token: PathBuf,
    legacy_url: Option<String>,
    legacy_token_file: Option<PathBuf>,
}

/// dev's idsvc reads the cutover's settings with `idbase idsvc`'s own
/// flag parser, so the defaults and checks are idsvc's.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct IdsvcCutoverFlags {
    #[command(flatten)]
    phases: idsvc::PhaseArgs,
}

/// Likewise for the gateway's legacy and phase-following flags.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct GatewayCutoverFlags {
    #[command(flatten)]
    legacy: gateway::legacy::LegacyArgs,
    #[command(flatten)]
    follow: gateway::phase::follow::FollowArgs,
    #[command(flatten)]
    shadow: gateway::phase::shadow::ShadowArgs,
}

impl Cutover {
    fn legacy_flags(&self) -> Vec<std::ffi::OsString> {
        let mut flags = Vec::new();
        if let Some(url) = &self.legacy_url {
            flags.extend(["--legacy-url".into(), url.into()]);
        }
        if let Some(file) = &self.legacy_token_file {
            flags.extend(["--legacy-token-file".into(), file.into()]);
        }
        flags
    }

    /// `idbase idsvc` flags.
    fn idsvc_flags(&self) -> Vec<std::ffi::OsString> {
        let mut flags = vec![
            "--admin-credentials".into(),
            self.admin_credentials.clone().into_os_string(),
        ];
        flags.extend(self.legacy_flags());
        flags
    }

    /// `idbase gateway` flags.
    fn gateway_flags(&self) -> Vec<std::ffi::OsString> {
        let mut flags = vec![
            "--idsvc-admin".into(),
            self.admin_url.clone().into(),
            "--idsvc-admin-token-file".into(),
            self.gateway_admin_token.clone().into_os_string(),
            "--gateway-id".into(),
            "dev".into(),
        ];
        flags.extend(self.legacy_flags());
        flags
    }

    /// idsvc's admin port: the Phases service with dev's credentials.
    fn admin_config(&self) -> anyhow::Result<idsvc::AdminConfig> {
        let flags = IdsvcCutoverFlags::try_parse_from(self.idsvc_flags())?;
        idsvc::AdminConfig::from_args(&flags.phases)
    }

    /// The gateway's legacy proxy and phase following.
    fn gateway_config(&self) -> anyhow::Result<gateway::CutoverConfig> {
        let flags = GatewayCutoverFlags::try_parse_from(self.gateway_flags())?;
        Ok(gateway::CutoverConfig {
            legacy: flags.legacy.config()?,
            // Plain text on loopback: the token file is the credential.
            follow: flags.follow.config(None)?,
            shadows: flags.shadow.shadows(),
        })
    }
}

/// Creates `dir` 0700, or makes an existing one so (a data directory made
/// by hand or under another umask).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Creates `path` empty and 0600 if missing (SQLite takes an empty file as
/// a new database), or makes an existing one 0600.
fn private_file(path: &Path) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let DataDir {
        keys_dir,
        credentials,
        database_url,
        admin_credentials,
        gateway_admin_token,
    } = prepare(&args.data_dir)?;
    let clients = Clients::from_tokens(CLASSES.iter().filter_map(|(name, class)| {
        credentials
            .clients
            .get(*name)
            .map(|token| (*name, *class, token.as_str()))
    }));
    let service = idsvc::build_service(&database_url, &keys_dir, args.policy.into_config()).await?;
    let grpc = TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("binding {}", args.grpc))?;
    let admin = TcpListener::bind(args.admin_grpc)
        .await
        .with_context(|| format!("binding {}", args.admin_grpc))?;
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let gateway_url = format!("http://{}", http.local_addr()?);
    let admin_url = format!("http://{}", admin.local_addr()?);
    let cutover = Cutover {
        admin_credentials,
        admin_url: admin_url.clone(),
        gateway_admin_token,
        legacy_url: args.legacy_url.clone(),
        legacy_token_file: args.legacy_token_file.clone(),
    };
    let admin_config = cutover.admin_config()?;
    let gateway_cutover = cutover.gateway_config()?;
    let config = gateway::GatewayConfig {
        upstream: gateway::upstream::UpstreamConfig::single(format!(
            "http://{}",
            grpc.local_addr()?
        )),
        clients,
        max_body_bytes: gateway::DEFAULT_MAX_BODY_BYTES,
        edge: gateway::edge::Edge::default(),
    };
    let web = credentials.clients.get("web").map_or("", String::as_str);
    println!(
        "\nidbase dev is running.\n  gateway:   {gateway_url}\n  idsvc:     grpc://{}\n  admin:     grpc://{}\n  data:      {}\n\
         Client tokens (also in {}):",
        args.grpc,
        args.admin_grpc,
        args.data_dir.display(),
        args.data_dir.join("dev-credentials.json").display(),
    );
    for (name, token) in &credentials.clients {
        println!("  {name:<9}  {token}");
    }
    println!(
        "\nTry:\n  curl -i -X POST {gateway_url}/v1/users -H 'Client-Token: {web}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"email\":\"hanako@example.com\",\"password\":\"correct horse battery\",\"phone\":\"090-1234-5678\"}}'\n  \
         IDBASE_ADMIN_TOKEN=$(python3 -c \"import json;print(json.load(open('{}'))['admin_token'])\") \\\n    \
         idbase admin phase get --admin-url {admin_url}\n",
        args.data_dir.join("dev-credentials.json").display(),
    );
    // One process on loopback: gRPC stays in plain text (refused elsewhere).
    idsvc::grpc::Transport::plaintext_on(&[grpc.local_addr()?, admin.local_addr()?])?;
    let idsvc = tokio::spawn(idsvc::serve(
        service,
        grpc,
        admin,
        idsvc::grpc::Transport::Plaintext,
        None,
        admin_config,
        shutdown.clone(),
    ));
    let metrics = match args.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let listeners = gateway::Listeners {
        http,
        https: None,
        metrics,
        limits: gateway::connections::ConnectionLimits::default(),
    };
    let served =
        gateway::serve_listeners_with(config, gateway_cutover, listeners, shutdown.clone()).await;
    shutdown.cancel();
    idsvc.await.context("idsvc task")??;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Policy {
        #[command(flatten)]
        policy: idsvc::PolicyArgs,
    }

    /// Every file under `dir` (recursively) that others can read or write.
    fn not_private(dir: &Path, found: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            if mode & 0o077 != 0 {
                found.push(format!("{} {:o}", path.display(), mode & 0o777));
            }
            if path.is_dir() {
                not_private(&path, found);
            }
        }
    }

    #[derive(serde::Deserialize)]
    struct AdminFile {
        admin: Vec<toml::Table>,
    }

    #[test]
    fn the_admin_credentials_hold_the_dev_operator_and_the_gateway() {
        let root = tempfile_dir("admin-credentials");
        let first = prepare(&root).unwrap();
        let text = fs::read_to_string(&first.admin_credentials).unwrap();
        assert_eq!(first.admin_credentials, root.join("admin-credentials.toml"));
        let file: AdminFile = toml::from_str(&text).unwrap();
        let gateway_token = fs::read_to_string(&first.gateway_admin_token).unwrap();
        let entry = |name: &str| {
            file.admin
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .clone()
        };
        let dev = entry("dev");
        assert_eq!(dev["role"].as_str(), Some("operator"));
        assert_eq!(
            dev["token_sha256"].as_str(),
            Some(sha256_hex(&first.credentials.admin_token).as_str())
        );
        let gateway = entry("gateway");
        assert_eq!(gateway["role"].as_str(), Some("gateway"));
        assert_eq!(
            gateway["token_sha256"].as_str(),
            Some(sha256_hex(&gateway_token).as_str())
        );
        assert_eq!(file.admin.len(), 2);
        // No token in clear; hashes are 64 hex digits.
        assert!(!text.contains(&first.credentials.admin_token));
        assert!(!text.contains(&gateway_token));
        assert_eq!(dev["token_sha256"].as_str().unwrap().len(), 64);

        // A second start keeps every token.
        let again = prepare(&root).unwrap();
        assert_eq!(again.credentials.admin_token, first.credentials.admin_token);
        assert_eq!(
            fs::read_to_string(&again.gateway_admin_token).unwrap(),
            gateway_token
        );
        assert_eq!(fs::read_to_string(&again.admin_credentials).unwrap(), text);
        for file in [&again.admin_credentials, &again.gateway_admin_token] {
            let mode = fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_cutover_flags_name_the_files_and_dev_s_own_admin_port() {
        let strings = |flags: Vec<std::ffi::OsString>| -> Vec<String> {
            flags
                .into_iter()
                .map(|f| f.into_string().unwrap())
                .collect()
        };
        let mut cutover = Cutover {
            admin_credentials: "/d/admin-credentials.toml".into(),
            admin_url: "http://127.0.0.1:50052".into(),
            gateway_admin_token: "/d/gateway-admin-token".into(),
            legacy_url: None,
            legacy_token_file: None,
        };
        assert_eq!(
            strings(cutover.idsvc_flags()),
            ["--admin-credentials", "/d/admin-credentials.toml"]
        );
        assert_eq!(
            strings(cutover.gateway_flags()),
            [
                "--idsvc-admin",
                "http://127.0.0.1:50052",
                "--idsvc-admin-token-file",
                "/d/gateway-admin-token",
                "--gateway-id",
                "dev"
            ]
        );
        cutover.legacy_url = Some("http://127.0.0.1:9090".into());
        cutover.legacy_token_file = Some("/d/legacy-token".into());
        let legacy = [
            "--legacy-url",
            "http://127.0.0.1:9090",
            "--legacy-token-file",
            "/d/legacy-token",
        ];
        assert!(strings(cutover.idsvc_flags()).ends_with(&legacy.map(String::from)));
        assert!(strings(cutover.gateway_flags()).ends_with(&legacy.map(String::from)));
    }

    #[test]
    fn legacy_urls_are_http() {
        assert_eq!(
            http_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            http_url("https://legacy.internal").unwrap(),
            "https://legacy.internal"
        );
        for bad in ["127.0.0.1:9090", "ftp://x", "http://", "http:///x"] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("idbase-dev-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn every_file_under_the_data_dir_is_private() {
        let root = std::env::temp_dir().join(format!("idbase-dev-modes-{}", std::process::id()));
        let data_dir = root.join("data");
        // A parent made under a permissive umask, and a data dir made by hand.
        fs::create_dir_all(&data_dir).unwrap();
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755)).unwrap();

        let prepared = prepare(&data_dir).unwrap();
        let policy = Policy::parse_from(["dev"]).policy;
        let service = idsvc::build_service(&prepared.database_url, &prepared.keys_dir, &policy)
            .await
            .unwrap();
        // A write, so SQLite has made its -wal and -shm files.
        service
            .register("hanako@example.com", "violet-kettle-harbour-9", None)
            .await
            .unwrap();
        assert!(data_dir.join("idbase.db-wal").exists());

        let mode = fs::metadata(&data_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mut found = Vec::new();
        not_private(&data_dir, &mut found);
        assert!(found.is_empty(), "readable by others: {found:?}");
        drop(service);
        fs::remove_dir_all(&root).unwrap();
    }
}
