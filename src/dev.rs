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
    #[command(flatten)]
    policy: idsvc::PolicyArgs,
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

/// The data directory, ready for the service: private, with keys,
/// credentials and the database file in it.
struct DataDir {
    keys_dir: PathBuf,
    credentials: DevCredentials,
    database_url: String,
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
    let database = data_dir.join("idbase.db");
    private_file(&database)?;
    Ok(DataDir {
        keys_dir,
        credentials,
        database_url: format!("sqlite://{}", database.display()),
    })
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
         -d '{{\"email\":\"hanako@example.com\",\"password\":\"correct horse battery\",\"phone\":\"090-1234-5678\"}}'\n"
    );
    // One process on loopback: gRPC stays in plain text (refused elsewhere).
    idsvc::grpc::Transport::plaintext_on(&[grpc.local_addr()?, admin.local_addr()?])?;
    let idsvc = tokio::spawn(idsvc::serve(
        service,
        grpc,
        admin,
        idsvc::grpc::Transport::Plaintext,
        None,
        idsvc::AdminConfig::default(),
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
    let served = gateway::serve_listeners(config, listeners, shutdown.clone()).await;
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
