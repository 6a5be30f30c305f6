//! `idbase dev`: idsvc and gateway in one process on SQLite under a data
//! directory, with keys and client credentials made on first start.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::clients::{ClientClass, Clients};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    #[arg(long, env = "IDBASE_GRPC", default_value = "127.0.0.1:50051")]
    grpc: SocketAddr,
    /// idsvc admin gRPC address.
    #[arg(long, env = "IDBASE_ADMIN_GRPC", default_value = "127.0.0.1:50052")]
    admin_grpc: SocketAddr,
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

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let keys_dir = args.data_dir.join("keys");
    if !idsvc::crypto::KeyRing::exists_in(&keys_dir) {
        idsvc::crypto::KeyRing::generate(&keys_dir)?;
        println!(
            "Created development keys in {} (mode 0600).",
            keys_dir.display()
        );
    }
    let credentials = credentials(&args.data_dir)?;
    let clients = Clients::from_tokens(CLASSES.iter().filter_map(|(name, class)| {
        credentials
            .clients
            .get(*name)
            .map(|token| (*name, *class, token.as_str()))
    }));
    let database_url = format!("sqlite://{}", args.data_dir.join("idbase.db").display());
    let service = idsvc::build_service(&database_url, &keys_dir, &args.policy).await?;
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
        shutdown.clone(),
    ));
    let served = gateway::serve(config, http, shutdown.clone()).await;
    shutdown.cancel();
    idsvc.await.context("idsvc task")??;
    served
}
